/// Z85, the ZeroMQ text encoding of binary keys (RFC 32): 4 bytes become 5 printable characters.
///
/// Both directions validate their input completely; nothing is silently truncated or zero-filled
/// (CZMQ turns invalid Z85 into an all-zero key, which is how keys get lost).
public enum Z85 {
    static let alphabet: [UInt8] = Array(
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8
    )

    /// Character (ASCII) -> digit value, 0xFF for characters outside the alphabet.
    static let digits: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, char) in alphabet.enumerated() { table[Int(char)] = UInt8(value) }
        return table
    }()

    /// Encodes bytes as Z85 text.
    /// - Parameter bytes: the data; its length must be a multiple of 4.
    /// - Returns: the Z85 text, 5 characters per 4 bytes.
    /// - Throws: ``Z85Error`` with code `.badLength` when the length is not a multiple of 4.
    public static func encode(_ bytes: some Collection<UInt8>) throws(Z85Error) -> String {
        guard bytes.count % 4 == 0 else {
            throw Z85Error(.badLength, "Z85 encodes multiples of 4 bytes; got \(bytes.count)")
        }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count / 4 * 5)
        // One encoder: the in-place one that secret keys use.
        let input = Array(bytes)
        input.withUnsafeBytes { encode($0, appendingTo: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes Z85 text.
    /// - Parameter text: Z85 text; its length must be a multiple of 5.
    /// - Returns: the decoded bytes, 4 per 5 characters.
    /// - Throws: ``Z85Error`` with code `.badLength`, `.badCharacter` (naming the character and
    ///   its position) or `.overflow` (a group above 2^32 − 1, such as `#####`).
    public static func decode(_ text: some StringProtocol) throws(Z85Error) -> [UInt8] {
        var out = [UInt8]()
        try decode(utf8: text.utf8, into: &out)
        return out
    }

    /// Decodes Z85 characters straight from their bytes, appending to `out`, which gets the
    /// capacity it needs before the first byte is written: the input is never copied and `out`
    /// never reallocates, so a caller that wipes `out` (and its own input) leaves no copy of a
    /// secret key behind.
    static func decode(utf8 chars: some Collection<UInt8>, into out: inout [UInt8]) throws(Z85Error) {
        let count = chars.count
        guard count % 5 == 0 else {
            throw Z85Error(.badLength, "Z85 text must be a multiple of 5 characters; got \(count)")
        }
        out.reserveCapacity(out.count + count / 5 * 4)
        var position = 0
        var value: UInt64 = 0
        for char in chars {
            let digit = digits[Int(char)]
            guard digit != 0xFF else {
                let shown = char < 0x80 ? String(UnicodeScalar(char)) : "byte 0x" + String(char, radix: 16, uppercase: true)
                throw Z85Error(.badCharacter, "'\(shown)' at position \(position + 1) is not a Z85 character")
            }
            value = value * 85 + UInt64(digit)
            position += 1
            guard position % 5 == 0 else { continue }
            guard value <= UInt64(UInt32.max) else {
                throw Z85Error(.overflow, "Z85 group at position \(position - 4) is larger than 32 bits")
            }
            out.append(UInt8(truncatingIfNeeded: value >> 24))
            out.append(UInt8(truncatingIfNeeded: value >> 16))
            out.append(UInt8(truncatingIfNeeded: value >> 8))
            out.append(UInt8(truncatingIfNeeded: value))
            value = 0
        }
    }

    /// Encodes 4-byte groups and appends the characters to `out`, which must already have the
    /// capacity (5 per 4 bytes): used to write a secret key into a buffer that is wiped later.
    static func encode(_ bytes: UnsafeRawBufferPointer, appendingTo out: inout [UInt8]) {
        precondition(bytes.count % 4 == 0 && out.capacity - out.count >= bytes.count / 4 * 5, "internal: Z85 buffer sized by the caller")
        var index = 0
        while index < bytes.count {
            var value = UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8 | UInt32(bytes[index + 3])
            var chunk: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
            chunk.4 = alphabet[Int(value % 85)]; value /= 85
            chunk.3 = alphabet[Int(value % 85)]; value /= 85
            chunk.2 = alphabet[Int(value % 85)]; value /= 85
            chunk.1 = alphabet[Int(value % 85)]; value /= 85
            chunk.0 = alphabet[Int(value % 85)]
            out.append(chunk.0); out.append(chunk.1); out.append(chunk.2); out.append(chunk.3); out.append(chunk.4)
            index += 4
        }
    }
}

/// Why Z85 text or bytes were refused.
public struct Z85Error: Error, Hashable, Sendable, CustomStringConvertible {
    /// An open set of reasons a program can switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String { name }
        public static let badLength = Code(name: "badLength")
        public static let badCharacter = Code(name: "badCharacter")
        public static let overflow = Code(name: "overflow")
    }

    public let code: Code
    public let message: String
    public var description: String { message }

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
