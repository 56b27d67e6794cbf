/// The part of ZPL (ZeroMQ Property Language, rfc.zeromq.org/spec:4) that certificate files use:
/// one `name` or `name = value` per line, hierarchy by indentation of exactly 4 spaces per level,
/// `#` comments, values bare or in single or double quotes (a quoted value may hold `#`).
///
/// Stricter than CZMQ's reader where CZMQ loses data silently: every refusal names the line.
enum ZPL {
    /// One property line.
    struct Line: Sendable, Equatable {
        /// 1-based line number in the file.
        let number: Int
        /// Indentation level: spaces / 4.
        let level: Int
        let name: String
        /// Where the value sits in the parsed bytes: nil for a bare name (a section), empty for
        /// `name =`. The value is not copied out, so a secret key's text exists only in the
        /// caller's buffer, which the caller wipes.
        let valueRange: Range<Int>?
    }

    struct Document: Sendable {
        var lines: [Line] = []
        /// Whole-line comments, text after the `#`, in file order.
        var comments: [String] = []
    }

    private static let space = UInt8(ascii: " ")
    private static let tab = UInt8(ascii: "\t")
    private static let hash = UInt8(ascii: "#")
    private static let equals = UInt8(ascii: "=")
    private static let doubleQuote = UInt8(ascii: "\"")
    private static let singleQuote = UInt8(ascii: "'")

    /// Characters ZPL allows in a name (RFC 4).
    static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        case UInt8(ascii: "$"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "@"), UInt8(ascii: "."),
             UInt8(ascii: "&"), UInt8(ascii: "+"), UInt8(ascii: "/"):
            true
        default:
            false
        }
    }

    /// Parses ZPL text. Errors carry the line but no path; the caller adds it.
    static func parse(_ bytes: [UInt8]) throws(CertificateError) -> Document {
        var document = Document()
        var lineNumber = 0
        var deepestAllowed = 0
        // A UTF-8 byte order mark, as some editors write, is not part of the first name.
        var start = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        while start < bytes.count {
            // RFC 4: LF, CR and CR LF all end a line.
            var end = start
            while end < bytes.count && bytes[end] != 0x0A && bytes[end] != 0x0D { end += 1 }
            var next = end
            if next < bytes.count {
                next += (bytes[next] == 0x0D && next + 1 < bytes.count && bytes[next + 1] == 0x0A) ? 2 : 1
            }
            lineNumber += 1
            if let line = try parseLine(bytes[start..<end], number: lineNumber, deepestAllowed: deepestAllowed, into: &document) {
                document.lines.append(line)
                deepestAllowed = line.level + 1
            }
            start = next
        }
        return document
    }

    private static func parseLine(
        _ raw: ArraySlice<UInt8>, number: Int, deepestAllowed: Int, into document: inout Document
    ) throws(CertificateError) -> Line? {
        func fail(_ message: String) -> CertificateError { CertificateError(.syntax, line: number, message) }

        var line = raw
        while let last = line.last, last == space || last == tab { line = line.dropLast() }
        if line.isEmpty { return nil }
        if let bad = line.first(where: { ($0 < 0x20 && $0 != tab) || $0 == 0x7F }) {
            throw fail("control character \(shown(bad)) in the line")
        }
        // Validated in place: a String made of the line would copy a secret key's text.
        guard isValidUTF8(line) else { throw fail("the line is not valid UTF-8") }

        var index = line.startIndex
        while index < line.endIndex && line[index] == space { index += 1 }
        let indent = index - line.startIndex
        if line[index] == hash {
            document.comments.append(text(line[(index + 1)...]))
            return nil
        }
        if line[index] == tab {
            throw fail("indentation contains a tab: indent with 4 spaces per level")
        }
        guard indent % 4 == 0 else {
            throw fail("indented by \(indent) spaces: indent with 4 spaces per level")
        }
        let level = indent / 4
        guard level <= deepestAllowed else {
            throw fail("indented by \(indent) spaces, deeper than the line above allows (at most \(deepestAllowed * 4))")
        }

        let nameStart = index
        while index < line.endIndex && isNameByte(line[index]) { index += 1 }
        guard index > nameStart else { throw fail("expected a name, found \(shown(line[index]))") }
        let name = text(line[nameStart..<index])
        if name.hasPrefix("/") || name.hasSuffix("/") { throw fail("'/' cannot start or end a name ('\(name)')") }

        index = skipBlanks(line, from: index)
        if index == line.endIndex || line[index] == hash {
            return Line(number: number, level: level, name: name, valueRange: nil)
        }
        guard line[index] == equals else {
            throw fail("expected '=' or the end of the line after '\(name)', found \(shown(line[index]))")
        }
        index = skipBlanks(line, from: index + 1)
        if index == line.endIndex {
            return Line(number: number, level: level, name: name, valueRange: index..<index)
        }
        let quote = line[index]
        if quote == doubleQuote || quote == singleQuote {
            let valueStart = index + 1
            guard let close = line[valueStart...].firstIndex(of: quote) else {
                throw fail("the value of '\(name)' has no closing \(quote == doubleQuote ? "\"" : "'")")
            }
            let after = skipBlanks(line, from: close + 1)
            guard after == line.endIndex || line[after] == hash else {
                // Not quoted back: on a secret-key line it could be part of the secret.
                throw fail("unexpected text after the quoted value of '\(name)' (only a # comment may follow)")
            }
            return Line(number: number, level: level, name: name, valueRange: valueStart..<close)
        }
        // A bare value runs to a comment; trailing blanks are not part of it. A '#' glued to the
        // value (`a#b`) is ambiguous: CZMQ cuts the value there without a word, we ask for quotes.
        var valueEnd = line[index...].firstIndex(of: hash) ?? line.endIndex
        if valueEnd < line.endIndex && line[valueEnd - 1] != space && line[valueEnd - 1] != tab {
            throw fail("the unquoted value of '\(name)' contains '#', which ZPL reads as the start of a comment: put the value in double quotes, or a space before a comment")
        }
        while valueEnd > index && (line[valueEnd - 1] == space || line[valueEnd - 1] == tab) { valueEnd -= 1 }
        return Line(number: number, level: level, name: name, valueRange: index..<valueEnd)
    }

    /// Whether the bytes are well-formed UTF-8, checked without copying them.
    private static func isValidUTF8(_ bytes: ArraySlice<UInt8>) -> Bool {
        var iterator = bytes.makeIterator()
        var parser = Unicode.UTF8.ForwardParser()
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    private static func skipBlanks(_ line: ArraySlice<UInt8>, from start: Int) -> Int {
        var index = start
        while index < line.endIndex && (line[index] == space || line[index] == tab) { index += 1 }
        return index
    }

    private static func text(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }

    static func shown(_ byte: UInt8) -> String {
        (0x21...0x7E).contains(byte) ? "'\(Character(UnicodeScalar(byte)))'" : "byte 0x\(String(byte, radix: 16, uppercase: true))"
    }

    /// Renders a two-level document: comment lines, then sections of `name = "value"` properties,
    /// 4-space indentation, LF line ends, every value double-quoted (values never contain `"`).
    static func render(comments: [String], sections: [(name: String, properties: [(name: String, value: String)])]) -> [UInt8] {
        var out = [UInt8]()
        for comment in comments { out.append(contentsOf: "#\(comment)\n".utf8) }
        if !comments.isEmpty { out.append(0x0A) }
        for section in sections {
            out.append(contentsOf: section.name.utf8)
            out.append(0x0A)
            for property in section.properties {
                out.append(contentsOf: "    \(property.name) = \"".utf8)
                out.append(contentsOf: property.value.utf8)
                out.append(contentsOf: "\"\n".utf8)
            }
        }
        return out
    }
}
