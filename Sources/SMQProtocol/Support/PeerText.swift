/// Text that came from a peer (a reason, a name, a file name), made safe for a log line, a
/// terminal or another peer.
///
/// A peer controls these bytes. Written raw, a newline forges a log line, an ESC sequence drives
/// the reader's terminal, and U+202E reverses what follows. ``escaped(_:)`` keeps printable text
/// as it is and writes every control character (C0, DEL, C1), every invisible format character
/// (bidi overrides and isolates, zero-width joiners, BOM) and U+2028/U+2029 as a visible escape
/// (`\n`, `\r`, `\t`, `\u{1B}`), so the result is one line of printable text that still shows what
/// the peer sent.
///
/// Escaping is idempotent: escaped text contains nothing to escape, so text that passes through
/// several hops (a worker's reason, escaped by the broker into a FAILED, read by the client) is
/// escaped once, not `\\u{1B}`. The price is that a peer can write a literal backslash-n that
/// reads like an escaped newline: it can make a line look odd, never break one.
public enum PeerText {
    /// The text with every character that could change how a line reads escaped.
    ///
    /// - Parameter text: Text from a peer (already decoded; invalid UTF-8 is U+FFFD by then).
    /// - Returns: One line of printable text; `text` itself when nothing needed escaping.
    public static func escaped(_ text: String) -> String {
        // Fast path: printable ASCII needs nothing.
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if needsEscape(scalar) {
                    out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// The bytes as UTF-8 (invalid sequences replaced by U+FFFD), escaped.
    ///
    /// - Parameter bytes: Bytes from a peer.
    /// - Returns: ``escaped(_:)`` of their text.
    public static func escaped(_ bytes: UnsafeRawBufferPointer) -> String {
        escaped(String(decoding: bytes, as: UTF8.self))
    }

    /// Whether the text is printable as it is: ``escaped(_:)`` would not change it.
    ///
    /// - Parameter text: The text to check.
    /// - Returns: true when no character needs an escape.
    public static func isPrintable(_ text: String) -> Bool {
        text.unicodeScalars.allSatisfy { !needsEscape($0) }
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) { return true }
        if scalar.isASCII { return false }
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .unassigned, .privateUse:
            return true
        default:
            return false
        }
    }
}
