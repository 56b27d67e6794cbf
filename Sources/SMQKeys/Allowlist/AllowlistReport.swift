internal import SMQProtocol

/// A file in an allowlist directory that was not used, and why.
public struct AllowlistProblem: Sendable, Hashable, CustomStringConvertible {
    /// The file (or, for `.nothingLoaded` and unreadable directories, the directory), as the
    /// directory listing spelled it: escape it before printing it (``description`` does).
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

    /// `path:line: message`, the path escaped (`PeerText.escaped`).
    public var description: String {
        CertificateError(code, path: path, line: line, message).description
    }
}

/// What one reload of an ``Allowlist`` did.
///
/// The set in force after a reload is always what that reload found: there is no "previous set
/// kept". When the directory could not be read or yields no valid certificate, ``failure`` says
/// why and ``entryCount`` is 0: nobody is admitted.
public struct AllowlistReport: Sendable {
    /// Entries whose keys were not in the previous set.
    public let added: [AllowlistEntry]
    /// Entries whose keys are gone: revoked peers.
    public let removed: [AllowlistEntry]
    /// Entries (as they are now) whose key stayed but whose policy, metadata or file changed.
    public let changed: [AllowlistEntry]
    /// Every file that was refused, with the reason, and ``failure`` if there is one; empty when
    /// all files were good.
    public let problems: [AllowlistProblem]
    /// Entries the naming rule does not read as certificates (`w.key.revoked`, `w.key~`, a
    /// subdirectory …), with the reason: listed, not errors.
    public let skipped: [AllowlistProblem]
    /// Why nobody is admitted, when nobody is: the directory could not be read (code `.notFound`,
    /// `.io`, `.insecurePermissions`, `.untrustedOwner`) or yields no valid certificate
    /// (`.nothingLoaded`). Also in ``problems``.
    public let failure: AllowlistProblem?
    /// The number of entries in force after this reload.
    public let entryCount: Int
    /// The allowlist's generation after this reload.
    public let generation: UInt64

    public init(added: [AllowlistEntry] = [], removed: [AllowlistEntry] = [], changed: [AllowlistEntry] = [],
                problems: [AllowlistProblem] = [], skipped: [AllowlistProblem] = [], failure: AllowlistProblem? = nil,
                entryCount: Int = 0, generation: UInt64 = 0) {
        self.added = added
        self.removed = removed
        self.changed = changed
        self.problems = problems
        self.skipped = skipped
        self.failure = failure
        self.entryCount = entryCount
        self.generation = generation
    }

    /// Whether the set of entries in force changed.
    public var hasChanges: Bool { !added.isEmpty || !removed.isEmpty || !changed.isEmpty }

    /// Whether the set in force is empty: every handshake is refused.
    public var admitsNoOne: Bool { entryCount == 0 }
}
