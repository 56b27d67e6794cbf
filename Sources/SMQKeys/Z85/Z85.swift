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
        var iterator = bytes.makeIterator()
        while let b0 = iterator.next(), let b1 = iterator.next(), let b2 = iterator.next(), let b3 = iterator.next() {
            var value = UInt32(b0) << 24 | UInt32(b1) << 16 | UInt32(b2) << 8 | UInt32(b3)
            var chunk: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
            chunk.4 = alphabet[Int(value % 85)]; value /= 85
            chunk.3 = alphabet[Int(value % 85)]; value /= 85
            chunk.2 = alphabet[Int(value % 85)]; value /= 85
            chunk.1 = alphabet[Int(value % 85)]; value /= 85
            chunk.0 = alphabet[Int(value % 85)]
            out.append(chunk.0); out.append(chunk.1); out.append(chunk.2); out.append(chunk.3); out.append(chunk.4)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes Z85 text.
    /// - Parameter text: Z85 text; its length must be a multiple of 5.
    /// - Returns: the decoded bytes, 4 per 5 characters.
    /// - Throws: ``Z85Error`` with code `.badLength`, `.badCharacter` (naming the character and
    ///   its position) or `.overflow` (a group above 2^32 − 1, such as `#####`).
    public static func decode(_ text: some StringProtocol) throws(Z85Error) -> [UInt8] {
        let chars = Array(text.utf8)
        guard chars.count % 5 == 0 else {
            throw Z85Error(.badLength, "Z85 text must be a multiple of 5 characters; got \(chars.count)")
        }
        var out = [UInt8]()
        out.reserveCapacity(chars.count / 5 * 4)
        var index = 0
        while index < chars.count {
            var value: UInt64 = 0
            for offset in 0..<5 {
                let char = chars[index + offset]
                let digit = digits[Int(char)]
                guard digit != 0xFF else {
                    let shown = char < 0x80 ? String(UnicodeScalar(char)) : "byte 0x" + String(char, radix: 16, uppercase: true)
                    throw Z85Error(.badCharacter, "'\(shown)' at position \(index + offset + 1) is not a Z85 character")
                }
                value = value * 85 + UInt64(digit)
            }
            guard value <= UInt64(UInt32.max) else {
                throw Z85Error(.overflow, "Z85 group at position \(index + 1) is larger than 32 bits")
            }
            out.append(UInt8(truncatingIfNeeded: value >> 24))
            out.append(UInt8(truncatingIfNeeded: value >> 16))
            out.append(UInt8(truncatingIfNeeded: value >> 8))
            out.append(UInt8(truncatingIfNeeded: value))
            index += 5
        }
        return out
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
