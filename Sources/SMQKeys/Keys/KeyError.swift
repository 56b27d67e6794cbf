/// Why a key was refused.
public struct KeyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// An open set of reasons a program can switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String { name }
        /// Not 32 bytes, or not 40 Z85 characters.
        public static let badLength = Code(name: "badLength")
        /// Text that is not valid Z85.
        public static let badEncoding = Code(name: "badEncoding")
        /// All 32 bytes zero: what CZMQ makes of invalid text; never a real key.
        public static let zeroKey = Code(name: "zeroKey")
        /// A secret key whose public key is not the one it was paired with.
        public static let mismatch = Code(name: "mismatch")
    }

    public let code: Code
    public let message: String
    public var description: String { message }

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
