public import Logging
internal import Synchronization

/// The peers a broker lets in: a directory of public certificate files, one per peer.
///
/// Every reload parses the whole directory before anything changes, then swaps the new set in
/// under a lock, so a lookup sees the old set or the new one, never a mix. A file that does not
/// parse, or whose policy metadata is invalid, is logged and skipped; a second file with a key
/// already seen (in sorted path order) is logged and skipped; a secret certificate is refused
/// (a secret does not belong in an allowlist). If the directory cannot be read, or it holds files
/// and none of them parsed, the previous set stays in force.
///
/// ``reloadIfChanged()`` compares the content of every file (a digest of its bytes) with the last
/// reload, so it notices any rewrite, even one that keeps the size and restores the mtime.
/// Files whose names start with `.` are ignored (editors' and ``Certificate``'s temporary files).
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
    }

    /// What a scan saw of each file: enough to tell whether anything changed since.
    private enum FileState: Hashable, Sendable {
        case digest([UInt8])
        case secret
        case failed(String)
    }

    private enum Snapshot: Hashable, Sendable {
        case none
        case unreadable(String)
        case files([String: FileState])
    }

    private struct ScannedFile {
        let path: String
        var bytes: [UInt8]?
        var error: CertificateError?
        var isSecret = false
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
    /// - Throws: ``CertificateError`` only if the directory does not exist or cannot be read; bad
    ///   files are skipped and reported (see ``problems``).
    public init(directory: String, logger: Logger) throws(CertificateError) {
        self.directory = directory
        self.logger = logger
        table = Mutex(Table())
        scanState = Mutex(.none)
        let scan = Self.scan(directory: directory)
        if let error = scan.directoryError { throw error }
        scanState.withLock { snapshot in
            _ = apply(scan, to: &snapshot)
        }
    }

    /// Loads the allowlist from a directory without logging (for tools such as `keygen check`,
    /// which print ``problems`` themselves).
    /// - Throws: ``CertificateError`` if the directory does not exist or cannot be read.
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

    /// The problems the last reload found (files skipped, the previous set kept).
    public var problems: [AllowlistProblem] {
        table.withLock { $0.problems }
    }

    /// Re-reads every file, swaps the new set in (unless nothing parsed) and logs what changed.
    /// - Returns: what changed and what was wrong; empty for an in-memory allowlist.
    @discardableResult
    public func reload() -> AllowlistReport {
        guard let directory else { return AllowlistReport(generation: generation) }
        return scanState.withLock { snapshot in
            apply(Self.scan(directory: directory), to: &snapshot)
        }
    }

    /// Reloads only if a file was added, removed or changed in content since the last reload.
    ///
    /// It reads every file and compares a digest of its bytes, so it is as cheap as reading a
    /// small directory; call it from a timer or a file-system watch.
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

    // MARK: - Scanning

    private static func scan(directory: String) -> Scan {
        let names: [String]
        do {
            names = try FileIO.list(directory: directory)
        } catch {
            return Scan(snapshot: .unreadable(error.description), directoryError: error)
        }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        var scan = Scan(snapshot: .none)
        var states: [String: FileState] = [:]
        for name in names.sorted() where !name.hasPrefix(".") {
            let path = base + name
            let mode: UInt32?
            do {
                mode = try FileIO.mode(of: path)
            } catch {
                scan.files.append(ScannedFile(path: path, error: error))
                states[path] = .failed(error.description)
                continue
            }
            guard let mode else {
                // Gone since the listing is fine; a link to nothing is a mistake worth reporting.
                if FileIO.isSymbolicLink(path) {
                    let error = CertificateError(.notFound, path: path, "is a symbolic link to a file that does not exist")
                    scan.files.append(ScannedFile(path: path, error: error))
                    states[path] = .failed(error.description)
                }
                continue
            }
            // Subdirectories are not part of the allowlist.
            guard mode & FileIO.typeMask != FileIO.directoryType else { continue }
            if Certificate.isSecretPath(name) {
                // Never read: a secret's bytes have no business in this process.
                scan.files.append(ScannedFile(path: path, isSecret: true))
                states[path] = .secret
                continue
            }
            do {
                let contents = try FileIO.read(path: path)
                scan.files.append(ScannedFile(path: path, bytes: contents.bytes))
                states[path] = .digest(FileIO.digest(contents.bytes))
            } catch {
                scan.files.append(ScannedFile(path: path, error: error))
                states[path] = .failed(error.description)
            }
        }
        scan.snapshot = .files(states)
        return scan
    }

    private static func wipe(_ scan: inout Scan) {
        // A public certificate is no secret, but a misnamed secret one might be.
        for index in scan.files.indices where scan.files[index].bytes != nil {
            FileIO.wipe(&scan.files[index].bytes!)
        }
    }

    // MARK: - Swapping

    private func apply(_ scan: consuming Scan, to snapshot: inout Snapshot) -> AllowlistReport {
        defer { Self.wipe(&scan) }
        snapshot = scan.snapshot
        let directory = directory ?? ""

        if let error = scan.directoryError {
            let problem = AllowlistProblem(error, path: directory)
            let (count, generation) = table.withLock { table in
                table.problems = [problem]
                return (table.entries.count, table.generation)
            }
            logger.error("cannot read the allowlist directory; the previous entries stay in force", metadata: [
                "directory": "\(directory)", "reason": "\(error.message)", "entries": "\(count)",
            ])
            return AllowlistReport(problems: [problem], keptPrevious: true, generation: generation)
        }

        var problems: [AllowlistProblem] = []
        var entries: [AllowlistEntry] = []
        var byKey: [PublicKey: AllowlistEntry] = [:]
        for file in scan.files {
            if file.isSecret {
                let problem = AllowlistProblem(
                    path: file.path, code: .secretInAllowlist,
                    message: "a secret certificate does not belong in an allowlist: move it out of this directory (only public certificates go here) and keep it private")
                problems.append(problem)
                logger.error("refusing a secret certificate in the allowlist directory", metadata: [
                    "file": "\(file.path)", "reason": "\(problem.message)",
                ])
                continue
            }
            let entry: AllowlistEntry
            do throws(CertificateError) {
                if let error = file.error { throw error }
                let certificate = try Certificate.parse(file.bytes ?? [], path: file.path, secretFile: false)
                entry = try AllowlistEntry(certificate: certificate, path: file.path)
            } catch {
                let problem = AllowlistProblem(error, path: file.path)
                problems.append(problem)
                logger.warning("skipping an allowlist file", metadata: [
                    "file": "\(file.path)", "reason": "\(problem.line.map { "line \($0): " } ?? "")\(problem.message)",
                ])
                continue
            }
            if let first = byKey[entry.publicKey] {
                let problem = AllowlistProblem(
                    path: file.path, code: .duplicateKey,
                    message: "has the same public key (\(entry.publicKey.fingerprint)…) as \(first.path ?? "another file"), which is used instead: remove one of them")
                problems.append(problem)
                logger.warning("duplicate key in the allowlist", metadata: [
                    "file": "\(file.path)", "kept": "\(first.path ?? "")", "key": "\(entry.publicKey.fingerprint)",
                ])
                continue
            }
            byKey[entry.publicKey] = entry
            entries.append(entry)
        }

        if entries.isEmpty && !scan.files.isEmpty {
            let problem = AllowlistProblem(
                path: directory, code: .nothingLoaded,
                message: "none of its \(scan.files.count) files is a usable public certificate; the previous entries stay in force")
            problems.append(problem)
            let (count, generation) = table.withLock { table in
                table.problems = problems
                return (table.entries.count, table.generation)
            }
            logger.error("no usable certificate in the allowlist directory; the previous entries stay in force", metadata: [
                "directory": "\(directory)", "files": "\(scan.files.count)", "entries": "\(count)",
            ])
            return AllowlistReport(problems: problems, keptPrevious: true, generation: generation)
        }

        let (added, removed, changed, generation) = table.withLock { table in
            let added = entries.filter { table.byKey[$0.publicKey] == nil }
            let removed = table.entries.filter { byKey[$0.publicKey] == nil }
            let changed = entries.filter { entry in table.byKey[entry.publicKey].map { $0 != entry } ?? false }
            if !added.isEmpty || !removed.isEmpty || !changed.isEmpty { table.generation += 1 }
            table.entries = entries
            table.byKey = byKey
            table.problems = problems
            return (added, removed, changed, table.generation)
        }
        let report = AllowlistReport(added: added, removed: removed, changed: changed, problems: problems, generation: generation)
        logger.log(level: report.hasChanges ? .info : .debug, "allowlist loaded", metadata: [
            "directory": "\(directory)", "entries": "\(entries.count)", "added": "\(added.count)",
            "removed": "\(removed.count)", "changed": "\(changed.count)", "problems": "\(problems.count)",
            "generation": "\(generation)",
        ])
        return report
    }
}
