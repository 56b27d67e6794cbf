/// The rules for a *reason*: UTF-8 text of at most 1 KiB, carried at the end of FAILED, REJECT and
/// DISCONNECT.
public enum Reason {
    /// The most bytes a reason may take: 1 KiB.
    public static let maxByteCount = 1024

    /// How many of the leading UTF-8 bytes of `text` a sender puts on the wire: all of them, or
    /// the longest prefix of at most 1 KiB that ends on a character (scalar) boundary.
    ///
    /// - Parameter text: The reason a sender wants to give.
    /// - Returns: The number of leading UTF-8 bytes to send.
    public static func encodedByteCount(of text: String) -> Int {
        let total = text.utf8.count
        if total <= maxByteCount { return total }
        var count = 0
        for scalar in text.unicodeScalars {
            let width = UTF8.width(scalar)
            if count + width > maxByteCount { break }
            count += width
        }
        return count
    }

    /// The reason a sender puts on the wire for `text`: cut to 1 KiB on a UTF-8 boundary.
    ///
    /// - Parameter text: The reason a sender wants to give.
    /// - Returns: `text`, or its longest prefix that fits.
    public static func truncated(_ text: String) -> String {
        let count = encodedByteCount(of: text)
        return String(decoding: text.utf8.prefix(count), as: UTF8.self)
    }

    /// Writes the truncated reason at `offset`; the caller sized the buffer with
    /// ``encodedByteCount(of:)``.
    static func write(_ text: String, to buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        let count = encodedByteCount(of: text)
        var copy = text
        copy.withUTF8 { utf8 in
            buffer.copyBytes(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8)[0..<count]), at: offset)
        }
        return offset + count
    }
}

/// A reason inside a received message: a view of its bytes.
///
/// Valid only while the message buffer it was parsed from is alive and unchanged. The bytes are
/// not checked for UTF-8 (a reason is for people; a bad byte must not cost the code it comes with):
/// ``string`` repairs them with U+FFFD. A peer wrote these bytes, so ``string`` is escaped
/// (``PeerText/escaped(_:)``): a reason can never put a newline into a log line, an ESC sequence
/// into a terminal or a bidi override into another peer's error message. Only ``bytes`` is raw.
public struct ReasonView: CustomStringConvertible {
    /// The reason's bytes, inside the message buffer.
    public let bytes: UnsafeRawBufferPointer

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// Whether the sender gave no reason.
    public var isEmpty: Bool { bytes.isEmpty }

    /// The reason as one line of printable text: invalid UTF-8 replaced by U+FFFD, control and
    /// format characters escaped (``PeerText/escaped(_:)``).
    public var string: String { PeerText.escaped(bytes) }

    public var description: String { string }
}
