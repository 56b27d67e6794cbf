internal import SMQProtocol

/// The `metadata` section of a certificate: ordered `name = value` pairs.
///
/// Names are `[A-Za-z0-9._+-]`; values are printable text without `"` (every value is written
/// double-quoted, so it can hold `#`, `'` and spaces). "Printable" is `PeerText`'s rule: no C0
/// or C1 control character, no DEL, no Unicode format character (bidi overrides such as U+202E,
/// zero-width characters), no line or paragraph separator, no private-use or unassigned code
/// point. A certificate file with such a value is refused when it is parsed, with an error naming
/// the line, so a name read from a certificate can never carry an escape sequence or reverse the
/// text of a log line or a terminal. The non-throwing
/// initialiser and the subscript accept anything; ``Certificate/save(directory:name:overwrite:)``
/// and ``init(validating:)`` refuse what cannot be written and read back by pyzmq and CZMQ.
///
/// Two values are equal when they hold the same pairs in the same order.
public struct CertificateMetadata: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    private struct Pair: Hashable, Sendable {
        var name: String
        var value: String
    }

    private var storage: [Pair] = []

    /// Metadata from ordered pairs; a repeated name replaces the earlier value in its place.
    public init(_ pairs: [(String, String)] = []) {
        for (name, value) in pairs { self[name] = value }
    }

    /// Metadata from ordered pairs, refusing invalid names and values and repeated names.
    /// - Throws: ``CertificateError`` `.invalidMetadata` naming the pair.
    public init(validating pairs: [(String, String)]) throws(CertificateError) {
        for (name, value) in pairs {
            try Self.validate(name: name, value: value)
            guard self[name] == nil else {
                throw CertificateError(.invalidMetadata, "metadata name '\(name)' appears twice")
            }
            storage.append(Pair(name: name, value: value))
        }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.init(elements)
    }

    /// The value for `name`; setting nil removes it, setting a new name appends it.
    public subscript(name: String) -> String? {
        get { storage.first(where: { $0.name == name })?.value }
        set {
            if let index = storage.firstIndex(where: { $0.name == name }) {
                if let newValue { storage[index].value = newValue } else { storage.remove(at: index) }
            } else if let newValue {
                storage.append(Pair(name: name, value: newValue))
            }
        }
    }

    /// The pairs in order.
    public var pairs: [(name: String, value: String)] { storage.map { ($0.name, $0.value) } }

    /// The names in order.
    public var names: [String] { storage.map(\.name) }

    public var count: Int { storage.count }
    public var isEmpty: Bool { storage.isEmpty }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> {
        pairs.makeIterator()
    }

    /// Checks every pair as ``validate(name:value:)`` does.
    /// - Throws: ``CertificateError`` `.invalidMetadata` for the first bad pair.
    public func validate() throws(CertificateError) {
        for pair in storage { try Self.validate(name: pair.name, value: pair.value) }
    }

    /// CZMQ reads at most 1024 bytes of a line and silently cuts the rest.
    static let maximumLineBytes = 1024

    /// Checks that a pair can be written as `    name = "value"` and read back unchanged by
    /// SecureMQ, pyzmq and CZMQ.
    /// - Throws: ``CertificateError`` `.invalidMetadata` saying what to change.
    public static func validate(name: String, value: String) throws(CertificateError) {
        guard !name.isEmpty else {
            throw CertificateError(.invalidMetadata, "a metadata name cannot be empty")
        }
        if let bad = name.unicodeScalars.first(where: { !isNameScalar($0) }) {
            throw CertificateError(.invalidMetadata, "metadata name '\(name)' contains \(shown(bad)): names use only letters, digits and . _ + -")
        }
        // pyzmq's reader takes any line that starts with public-key or secret-key for the key.
        if name.hasPrefix("public-key") || name.hasPrefix("secret-key") {
            throw CertificateError(.invalidMetadata, "metadata name '\(name)' would be read as the key by pyzmq: choose a name that does not start with public-key or secret-key")
        }
        if value.unicodeScalars.contains("\"") {
            throw CertificateError(.invalidMetadata, "the value of '\(name)' contains '\"', which a certificate file cannot hold: remove it")
        }
        if let bad = value.unicodeScalars.first(where: { !isPrintable($0) }) {
            throw CertificateError(.invalidMetadata, "the value of '\(name)' contains \(shown(bad)), a control or invisible formatting character: values are one line of printable text (names reach log lines and terminals)")
        }
        let lineBytes = 4 + name.utf8.count + 4 + value.utf8.count + 1 + 1
        guard lineBytes <= maximumLineBytes else {
            throw CertificateError(.invalidMetadata, "the value of '\(name)' is \(value.utf8.count) bytes: too long for CZMQ, which reads lines of at most \(maximumLineBytes) bytes; shorten it")
        }
    }

    /// Printable as `PeerText.escaped` sees it: no C0 or C1 control, DEL, Unicode format
    /// character (bidi overrides and isolates such as U+202E, zero-width characters, BOM), line
    /// or paragraph separator, private-use or unassigned code point.
    static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
        PeerText.isPrintable(String(scalar))
    }

    static func isNameScalar(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "a"..."z", "A"..."Z", "0"..."9", ".", "_", "+", "-": true
        default: false
        }
    }

    private static func shown(_ scalar: Unicode.Scalar) -> String {
        switch scalar.value {
        case 0x20: "a space"
        case 0x21..<0x7F: "'\(scalar)'"
        default: "U+\(String(scalar.value, radix: 16, uppercase: true))"
        }
    }

    /// `[name: "value", …]`.
    public var description: String {
        "[" + storage.map { "\($0.name): \"\($0.value)\"" }.joined(separator: ", ") + "]"
    }
}
