/// A file in an allowlist directory that was not used, and why.
public struct AllowlistProblem: Sendable, Hashable, CustomStringConvertible {
    /// The file (or, for `.nothingLoaded` and unreadable directories, the directory).
    public let path: String
    /// The line at fault, if one is.
    public let line: Int?
    public let code: CertificateError.Code
    /// What is wrong and how to fix it.
    public let message: String

    public init(path: String, line: Int? = nil, code: CertificateError.Code, message: String) {
        self.path = path
        self.line = line
        self.code = code
        self.message = message
    }

    init(_ error: CertificateError, path: String) {
        self.init(path: error.path ?? path, line: error.line, code: error.code, message: error.message)
    }

    /// `path:line: message`.
    public var description: String {
        CertificateError(code, path: path, line: line, message).description
    }
}

/// What one reload of an ``Allowlist`` did.
public struct AllowlistReport: Sendable {
    /// Entries whose keys were not in the previous set.
    public let added: [AllowlistEntry]
    /// Entries whose keys are gone: revoked peers.
    public let removed: [AllowlistEntry]
    /// Entries (as they are now) whose key stayed but whose policy, metadata or file changed.
    public let changed: [AllowlistEntry]
    /// Every file that was skipped, with the reason; empty when all files were good.
    public let problems: [AllowlistProblem]
    /// True when the new set was refused and the previous one stays in force (the directory could
    /// not be read, or files were present and none parsed).
    public let keptPrevious: Bool
    /// The allowlist's generation after this reload.
    public let generation: UInt64

    public init(added: [AllowlistEntry] = [], removed: [AllowlistEntry] = [], changed: [AllowlistEntry] = [],
                problems: [AllowlistProblem] = [], keptPrevious: Bool = false, generation: UInt64 = 0) {
        self.added = added
        self.removed = removed
        self.changed = changed
        self.problems = problems
        self.keptPrevious = keptPrevious
        self.generation = generation
    }

    /// Whether the set of entries in force changed.
    public var hasChanges: Bool { !added.isEmpty || !removed.isEmpty || !changed.isEmpty }
}
