public import Logging
internal import SMQProtocol
internal import Synchronization

/// The peers a broker lets in: a directory of public certificate files, one per peer.
///
/// ## Which files are certificates
///
/// Every name in the directory is sorted into one of these, in this order:
///
/// 1. A name starting with `.` is ignored without a word (editors' swap files and the temporary
///    files ``Certificate/save(directory:name:overwrite:)`` writes before renaming them into place).
/// 2. A name ending in `_secret` (`w.key_secret`, CZMQ's `w_secret`) is a secret certificate and
///    is refused as a problem without being read: a secret does not belong in an allowlist.
/// 3. A subdirectory is skipped.
/// 4. A *certificate name* is read as a certificate: either it ends in `.key` (SecureMQ's and
///    pyzmq's `w.key`), or it has no extension at all, that is it consists only of the letters,
///    digits and `_ + -` of ``Certificate/validate(fileName:)`` with no `.` (CZMQ's `w`).
/// 5. Any other name is skipped: `w.key.revoked`, `w.key~`, `w.key.bak`, `w~`, `#w#`,
///    `notes.txt`, `README.md`. So renaming a file to add a suffix disables it in both layouts:
///    `mv w.key w.key.revoked`, `mv w w.revoked`.
///
/// A skipped file is listed in ``skipped`` with the reason (and `keygen check` prints it), and is
/// logged once by the reload that first sees it; it is not an error. A file with a certificate
/// name that is not a valid public certificate is a problem (``problems``), logged as a warning:
/// an extension-less `README` is one (rename it `README.md`).
///
/// ## What is refused
///
/// A certificate name that is a symbolic link (links are never followed: `lstat`, then `openat`
/// with `O_NOFOLLOW` relative to the directory that was checked), not a regular file, writable by
/// its group or other users, or owned by neither root nor the user this process runs as; a file
/// that does not parse, whose policy metadata is invalid, or whose key a file earlier in sorted
/// order already has. The directory itself must not be writable by its group or other users and
/// must be owned by root or this process's user.
///
/// ## Failing closed
///
/// Every reload parses the whole directory before anything changes, then swaps the new set in
/// under a lock, so a lookup sees the old set or the new one, never a mix. The new set is always
/// the result of this reload: if the directory cannot be read (missing, not a directory, out of
/// file descriptors, insecure) or yields no valid certificate, the set in force becomes empty, so
/// nobody is admitted, and an `error` line says so and why. The previous set never stays in force.
///
/// ``reloadIfChanged()`` compares the content of every certificate file (a digest of its bytes)
/// and the names and kinds of all other entries with the last reload, so it notices any rewrite,
/// even one that keeps the size and restores the mtime, and any rename.
///
/// File names and metadata values in log lines and problem descriptions are escaped with
/// `PeerText.escaped`; metadata values are limited to printable text when they are parsed.
public final class Allowlist: Sendable {
    /// The directory, nil for a fixed in-memory set.
    public let directory: String?
    private let logger: Logger
    private let table: Mutex<Table>
    /// Serialises reloads (so an older scan never replaces a newer one) and remembers what the
    /// last scan saw. Lookups never wait for it: they use `table`, locked only to swap.
    private let scanState: Mutex<Snapshot>

    private struct Table: Sendable {
        var entries: [AllowlistEntry] = []
        var byKey: [PublicKey: AllowlistEntry] = [:]
        var generation: UInt64 = 0
        var problems: [AllowlistProblem] = []
        var skipped: [AllowlistProblem] = []
        var failure: AllowlistProblem?
    }

    /// What a scan saw of each name: enough to tell whether anything changed since.
    private enum FileState: Hashable, Sendable {
        case digest([UInt8])
        case secret
        case skipped(String)
        case failed(String)
    }

    private enum Snapshot: Hashable, Sendable {
        case none
        case unreadable(String)
        case files([String: FileState])
    }

    private enum Outcome {
        case certificate([UInt8])
        case secret
        case skipped(CertificateError)
        case failed(CertificateError)
    }

    private struct ScannedFile {
        let path: String
        var outcome: Outcome
    }

    private struct Scan {
        var snapshot: Snapshot
        var files: [ScannedFile] = []
        var directoryError: CertificateError?
    }

    /// Loads the allowlist from a directory and logs what it found.
    /// - Parameters:
    ///   - directory: the directory of public certificate files.
    ///   - logger: where problems and reloads are reported.
    /// - Throws: ``CertificateError`` if the directory does not exist, cannot be read, or is
    ///   writable by its group or others or owned by another user; bad files are skipped and
    ///   reported (see ``problems``). A directory with no valid file loads, admitting no one.
    public init(directory: String, logger: Logger) throws(CertificateError) {
        self.directory = directory
        self.logger = logger
        table = Mutex(Table())
        scanState = Mutex(.none)
        var scan = Self.scan(directory: directory)
        if let error = scan.directoryError {
            Self.wipe(&scan)
            throw error
        }
        scanState.withLock { snapshot in
            _ = apply(scan, to: &snapshot)
        }
    }

    /// Loads the allowlist from a directory without logging (for tools such as `keygen check`,
    /// which print ``problems`` and ``skipped`` themselves).
    /// - Throws: ``CertificateError`` as ``init(directory:logger:)`` does.
    public convenience init(directory: String) throws(CertificateError) {
        try self.init(directory: directory, logger: Logger(label: "securemq.allowlist", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    /// A fixed in-memory set (tests, embedding). For two entries with the same key the first wins.
    public init(entries: [AllowlistEntry]) {
        directory = nil
        logger = Logger(label: "securemq.allowlist", factory: { _ in SwiftLogNoOpLogHandler() })
        var table = Table()
        for entry in entries where table.byKey[entry.publicKey] == nil {
            table.byKey[entry.publicKey] = entry
            table.entries.append(entry)
        }
        self.table = Mutex(table)
        scanState = Mutex(.none)
    }

    /// The entry for a peer's public key, or nil if the key is not allowed in.
    public func entry(for key: PublicKey) -> AllowlistEntry? {
        table.withLock { $0.byKey[key] }
    }

    /// The entries in force, in sorted path order.
    public var entries: [AllowlistEntry] {
        table.withLock { $0.entries }
    }

    /// Increases by one on every reload that changed the entries in force.
    public var generation: UInt64 {
        table.withLock { $0.generation }
    }

    /// The problems the last reload found: files refused, and (as ``failure``) a directory that
    /// could not be read or yields no valid certificate.
    public var problems: [AllowlistProblem] {
        table.withLock { $0.problems }
    }

    /// The entries the last reload skipped because the naming rule does not read them as
    /// certificates (`w.key.revoked`, `w.key~`, subdirectories …), each with the reason.
    public var skipped: [AllowlistProblem] {
        table.withLock { $0.skipped }
    }

    /// Why the last reload left no one admitted, when it did: the directory could not be read
    /// or yields no valid certificate. nil while at least one entry is in force.
    public var failure: AllowlistProblem? {
        table.withLock { $0.failure }
    }

    /// Whether `name` (a file name, no directory) is read as a certificate in an allowlist
    /// directory: it ends in `.key` and has something before it, or it has no `.` and consists of
    /// letters, digits and `_ + -` (CZMQ's extension-less layout), not starting with `-`. Names
    /// ending in `_secret` are secret files and never read; see the type's documentation.
    public static func isCertificateFileName(_ name: String) -> Bool {
        guard !name.hasPrefix("."), !Certificate.isSecretPath(name) else { return false }
        if name.hasSuffix(".key") { return name.utf8.count > 4 }
        return !name.isEmpty && !name.hasPrefix("-")
            && name.unicodeScalars.allSatisfy { $0 != "." && CertificateMetadata.isNameScalar($0) }
    }

    /// Re-reads every file, swaps the new set in and logs what changed.
    /// - Returns: what changed and what was wrong; empty for an in-memory allowlist.
    @discardableResult
    public func reload() -> AllowlistReport {
        guard let directory else {
            return table.withLock { AllowlistReport(entryCount: $0.entries.count, generation: $0.generation) }
        }
        return scanState.withLock { snapshot in
            apply(Self.scan(directory: directory), to: &snapshot)
        }
    }

    /// Reloads only if a file was added, removed, renamed or changed in content since the last
    /// reload (or the directory's readability changed).
    ///
    /// It reads every certificate file and compares a digest of its bytes, so it is as cheap as
    /// reading a small directory; call it from a timer or a file-system watch. Since nothing is
    /// logged when nothing changed, each problem is logged once, not on every poll.
    /// - Returns: the reload's report, or nil when nothing changed (or for an in-memory allowlist).
    public func reloadIfChanged() -> AllowlistReport? {
        guard let directory else { return nil }
        return scanState.withLock { snapshot -> AllowlistReport? in
            var scan = Self.scan(directory: directory)
            guard scan.snapshot != snapshot else {
                Self.wipe(&scan)
                return nil
            }
            return apply(scan, to: &snapshot)
        }
    }

    // MARK: - Trust

    /// Why a file or directory with this mode and owner cannot be trusted, or nil if it can: an
    /// allowlist is only as safe as the set of users who can change it.
    static func untrusted(_ info: FileIO.FileInfo, path: String, isDirectory: Bool) -> CertificateError? {
        let what = isDirectory ? "allowlist directory" : "allowlist file"
        let shown = PeerText.escaped(path)
        if info.permissions & 0o022 != 0 {
            let who = switch (info.permissions & 0o020 != 0, info.permissions & 0o002 != 0) {
            case (true, true): "its group and other users"
            case (true, false): "its group"
            default: "other users"
            }
            let mode = String(info.permissions, radix: 8)
            return CertificateError(
                .insecurePermissions, path: path,
                "the \(what) is writable by \(who) (mode \(String(repeating: "0", count: max(0, 4 - mode.count)))\(mode)), who could let anyone in: make it writable by its owner only with: chmod go-w \(shown)")
        }
        let me = FileIO.effectiveUserID
        if info.owner != 0 && info.owner != me {
            return CertificateError(
                .untrustedOwner, path: path,
                "the \(what) is owned by uid \(info.owner), neither root nor the user this process runs as (uid \(me)), who could let anyone in: chown it to one of them")
        }
        return nil
    }

    // MARK: - Scanning

    private static func scan(directory: String) -> Scan {
        func unreadable(_ error: CertificateError) -> Scan {
            Scan(snapshot: .unreadable(error.description), directoryError: error)
        }
        let directoryFD: Int32
        do {
            directoryFD = try FileIO.openDirectory(directory)
        } catch {
            return unreadable(error)
        }
        defer { FileIO.closeDescriptor(directoryFD) }
        let names: [String]
        do {
            let info = try FileIO.info(of: directoryFD, path: directory)
            if let error = untrusted(info, path: directory, isDirectory: true) { return unreadable(error) }
            names = try FileIO.list(directory: directoryFD, path: directory)
        } catch {
            return unreadable(error)
        }

        let base = directory.hasSuffix("/") ? directory : directory + "/"
        var scan = Scan(snapshot: .none)
        var states: [String: FileState] = [:]
        for name in names.sorted() where !name.hasPrefix(".") {
            let path = base + name
            let outcome = scanEntry(name, path: path, directory: directoryFD)
            guard let outcome else { continue }
            switch outcome {
            case .certificate(let bytes): states[name] = .digest(FileIO.digest(bytes))
            case .secret: states[name] = .secret
            case .skipped(let error): states[name] = .skipped(error.message)
            case .failed(let error): states[name] = .failed(error.description)
            }
            scan.files.append(ScannedFile(path: path, outcome: outcome))
        }
        scan.snapshot = .files(states)
        return scan
    }

    /// What one directory entry is; nil if it vanished since the listing.
    private static func scanEntry(_ name: String, path: String, directory: Int32) -> Outcome? {
        // Never read, never even stat'ed: a secret's bytes have no business in this process.
        if Certificate.isSecretPath(name) { return .secret }
        let info: FileIO.FileInfo
        do {
            guard let found = try FileIO.linkInfo(of: name, in: directory, displayPath: path) else { return nil }
            info = found
        } catch {
            return .failed(error)
        }
        if info.isDirectory {
            return .skipped(CertificateError(.notACertificate, path: path, "is a directory: subdirectories are not part of the allowlist"))
        }
        guard isCertificateFileName(name) else {
            return .skipped(CertificateError(
                .notACertificate, path: path,
                "not a certificate name, so not read: certificates are NAME.key, or NAME without any extension (CZMQ); this is how a renamed file (NAME.key.revoked, an editor's NAME.key~) is disabled"))
        }
        if info.isSymbolicLink {
            return .failed(CertificateError(.symbolicLink, path: path, "is a symbolic link: allowlist files must be regular files (copy the certificate in instead of linking it)"))
        }
        guard info.isRegular else {
            return .failed(CertificateError(.io, path: path, "is not a regular file (a FIFO, socket or device), not a certificate file"))
        }
        do {
            let contents = try FileIO.read(path: name, in: directory, displayPath: path, followSymbolicLinks: false) { info throws(CertificateError) in
                if let error = untrusted(info, path: path, isDirectory: false) { throw error }
            }
            return .certificate(contents.bytes)
        } catch {
            return .failed(error)
        }
    }

    private static func wipe(_ scan: inout Scan) {
        // A public certificate is no secret, but a misnamed secret one might be.
        for index in scan.files.indices {
            if case .certificate(var bytes) = scan.files[index].outcome {
                scan.files[index].outcome = .secret
                FileIO.wipe(&bytes)
            }
        }
    }

    // MARK: - Swapping

    private func apply(_ scan: consuming Scan, to snapshot: inout Snapshot) -> AllowlistReport {
        defer { Self.wipe(&scan) }
        snapshot = scan.snapshot
        let directory = directory ?? ""
        let shownDirectory = PeerText.escaped(directory)

        var problems: [AllowlistProblem] = []
        var skipped: [AllowlistProblem] = []
        var entries: [AllowlistEntry] = []
        var byKey: [PublicKey: AllowlistEntry] = [:]
        var failure: AllowlistProblem?

        if let error = scan.directoryError {
            let problem = AllowlistProblem(error, path: directory)
            problems.append(problem)
            failure = problem
        } else {
            for file in scan.files {
                let shownPath = PeerText.escaped(file.path)
                let entry: AllowlistEntry
                switch file.outcome {
                case .secret:
                    let problem = AllowlistProblem(
                        path: file.path, code: .secretInAllowlist,
                        message: "a secret certificate does not belong in an allowlist: move it out of this directory (only public certificates go here) and keep it private")
                    problems.append(problem)
                    logger.error("refusing a secret certificate in the allowlist directory", metadata: [
                        "file": "\(shownPath)", "reason": "\(problem.message)",
                    ])
                    continue
                case .skipped(let error):
                    let problem = AllowlistProblem(error, path: file.path)
                    skipped.append(problem)
                    logger.notice("skipping an allowlist entry that is not a certificate", metadata: [
                        "file": "\(shownPath)", "reason": "\(problem.message)",
                    ])
                    continue
                case .failed(let error):
                    let problem = AllowlistProblem(error, path: file.path)
                    problems.append(problem)
                    logger.warning("refusing an allowlist file", metadata: [
                        "file": "\(shownPath)", "reason": "\(problem.message)",
                    ])
                    continue
                case .certificate(let bytes):
                    do throws(CertificateError) {
                        let certificate = try Certificate.parse(bytes, path: file.path, secretFile: false)
                        entry = try AllowlistEntry(certificate: certificate, path: file.path)
                    } catch {
                        let problem = AllowlistProblem(error, path: file.path)
                        problems.append(problem)
                        logger.warning("skipping an allowlist file", metadata: [
                            "file": "\(shownPath)", "reason": "\(problem.line.map { "line \($0): " } ?? "")\(problem.message)",
                        ])
                        continue
                    }
                }
                if let first = byKey[entry.publicKey] {
                    let problem = AllowlistProblem(
                        path: file.path, code: .duplicateKey,
                        message: "has the same public key (\(entry.publicKey.fingerprint)…) as \(PeerText.escaped(first.path ?? "another file")), which is used instead: remove one of them")
                    problems.append(problem)
                    logger.warning("duplicate key in the allowlist", metadata: [
                        "file": "\(shownPath)", "kept": "\(PeerText.escaped(first.path ?? ""))", "key": "\(entry.publicKey.fingerprint)",
                    ])
                    continue
                }
                byKey[entry.publicKey] = entry
                entries.append(entry)
            }
            if entries.isEmpty {
                let considered = scan.files.count - skipped.count
                let why = scan.files.isEmpty
                    ? "it is empty"
                    : considered == 0
                        ? "none of its \(scan.files.count) entries has a certificate name (NAME.key, or NAME without extension)"
                        : "none of its \(considered) certificate files is a usable public certificate"
                let problem = AllowlistProblem(
                    path: directory, code: .nothingLoaded,
                    message: "yields no valid public certificate (\(why)): nobody is admitted until one is added")
                problems.append(problem)
                failure = problem
            }
        }

        let (added, removed, changed, generation) = table.withLock { table in
            let added = entries.filter { table.byKey[$0.publicKey] == nil }
            let removed = table.entries.filter { byKey[$0.publicKey] == nil }
            let changed = entries.filter { entry in table.byKey[entry.publicKey].map { $0 != entry } ?? false }
            if !added.isEmpty || !removed.isEmpty || !changed.isEmpty { table.generation += 1 }
            table.entries = entries
            table.byKey = byKey
            table.problems = problems
            table.skipped = skipped
            table.failure = failure
            return (added, removed, changed, table.generation)
        }
        let report = AllowlistReport(added: added, removed: removed, changed: changed, problems: problems, skipped: skipped,
                                     failure: failure, entryCount: entries.count, generation: generation)
        if let failure {
            // Loud on purpose: a broker that admits no one looks like an outage to its peers.
            logger.error("the allowlist admits no one", metadata: [
                "directory": "\(shownDirectory)", "reason": "\(failure.message)", "revoked": "\(removed.count)",
                "generation": "\(generation)",
            ])
        }
        logger.log(level: report.hasChanges ? .info : .debug, "allowlist loaded", metadata: [
            "directory": "\(shownDirectory)", "entries": "\(entries.count)", "added": "\(added.count)",
            "removed": "\(removed.count)", "changed": "\(changed.count)", "problems": "\(problems.count)",
            "skipped": "\(skipped.count)", "generation": "\(generation)",
        ])
        return report
    }
}
