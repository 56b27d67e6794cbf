internal import SMQProtocol

/// Why a certificate file, its metadata or an allowlist entry was refused.
///
/// Every error names the file (``path``) and, where one line is to blame, the line (``line``), so
/// ``description`` reads like a compiler diagnostic: `certs/allowed/w1.key:7: …`.
public struct CertificateError: Error, Hashable, Sendable, CustomStringConvertible {
    /// An open set of reasons a program can switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String { name }
        public init(name: String) { self.name = name }

        /// The file or directory does not exist.
        public static let notFound = Code(name: "notFound")
        /// A system call failed (permission denied, not a regular file, disk full, …).
        public static let io = Code(name: "io")
        /// A secret file that its group or other users can access, or an allowlist file or
        /// directory that its group or other users can write.
        public static let insecurePermissions = Code(name: "insecurePermissions")
        /// Not ZPL: bad indentation, a missing quote, an unknown section, text after a value.
        public static let syntax = Code(name: "syntax")
        /// A key that is not 40 Z85 characters, not valid Z85, or all zeros.
        public static let invalidKey = Code(name: "invalidKey")
        /// A secret file whose public key is not the one its secret key derives.
        public static let keyMismatch = Code(name: "keyMismatch")
        /// No `public-key` (or, in a secret file, no `secret-key`).
        public static let missingKey = Code(name: "missingKey")
        /// A file named like a public certificate that holds a secret key.
        public static let unexpectedSecret = Code(name: "unexpectedSecret")
        /// A metadata name outside `[A-Za-z0-9._+-]`, a value with `"`, a duplicate name.
        public static let invalidMetadata = Code(name: "invalidMetadata")
        /// Metadata the allowlist cannot use: an unknown role, a weight outside 1…1000, bad services.
        public static let invalidPolicy = Code(name: "invalidPolicy")
        /// A key pair was asked of a certificate that has only the public key.
        public static let noSecretKey = Code(name: "noSecretKey")
        /// The file to write exists and `overwrite` was not set.
        public static let alreadyExists = Code(name: "alreadyExists")
        /// A certificate name that cannot be a file name.
        public static let invalidName = Code(name: "invalidName")
        /// Two allowlist files with the same public key.
        public static let duplicateKey = Code(name: "duplicateKey")
        /// A secret certificate in an allowlist directory.
        public static let secretInAllowlist = Code(name: "secretInAllowlist")
        /// An allowlist directory that yields no valid public certificate: nobody is admitted.
        public static let nothingLoaded = Code(name: "nothingLoaded")
        /// An allowlist entry that is a symbolic link (refused: links are never followed there).
        public static let symbolicLink = Code(name: "symbolicLink")
        /// An allowlist file or directory owned by neither root nor the user the process runs as.
        public static let untrustedOwner = Code(name: "untrustedOwner")
        /// An allowlist entry that the naming rule does not read as a certificate (such as
        /// `w.key.revoked`, `w.key~`, `notes.txt` or a subdirectory): skipped, not an error.
        public static let notACertificate = Code(name: "notACertificate")
    }

    public let code: Code
    /// The file (or directory) concerned, if any.
    public let path: String?
    /// The 1-based line of ``path`` at fault, if one line is.
    public let line: Int?
    /// What is wrong and, where possible, how to fix it.
    public let message: String

    public init(_ code: Code, path: String? = nil, line: Int? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.line = line
        self.message = message
    }

    /// `path:line: message`, or as much of it as is known. The path is escaped
    /// (`PeerText.escaped`): a file name can hold a newline or an ESC sequence.
    public var description: String {
        let path = path.map(PeerText.escaped)
        return switch (path, line) {
        case let (path?, line?): "\(path):\(line): \(message)"
        case let (path?, nil): "\(path): \(message)"
        case let (nil, line?): "line \(line): \(message)"
        case (nil, nil): message
        }
    }
}
