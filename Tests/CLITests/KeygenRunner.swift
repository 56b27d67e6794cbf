import Foundation
import Glibc
import Testing

/// Runs the built `keygen` as a user would, in a scratch directory.
struct Keygen {
    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// The `keygen` built next to this test bundle (`.build/<triple>/debug/`), or `SMQ_KEYGEN`.
    static func executable() throws -> String {
        if let path = ProcessInfo.processInfo.environment["SMQ_KEYGEN"], !path.isEmpty { return path }
        var tried: [String] = []
        let selfPath = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: selfPath).resolvingSymlinksInPath().deletingLastPathComponent()
        while directory.path != "/" {
            for candidate in ["keygen", "debug/keygen", ".build/debug/keygen"] {
                let path = directory.appendingPathComponent(candidate).path
                tried.append(path)
                if FileManager.default.isExecutableFile(atPath: path) { return path }
            }
            directory.deleteLastPathComponent()
        }
        let found: String? = nil
        return try #require(found, "keygen not found (tried \(tried.prefix(6))…): run swift build --build-tests first, or set SMQ_KEYGEN")
    }

    let directory: String

    /// How long one `keygen` run may take: generous for a debug build on two busy cores; a run
    /// returns as soon as the process ends.
    static let defaultTimeout: Duration = .seconds(30)

    @discardableResult
    func run(_ arguments: String..., stdin: String? = nil, timeout: Duration = defaultTimeout) throws -> Result {
        try run(arguments, stdin: stdin, timeout: timeout)
    }

    /// Runs `keygen` with `arguments` and waits for it, at most `timeout`.
    /// - Throws: when it cannot start, or still runs at the deadline (it is then killed).
    @discardableResult
    func run(_ arguments: [String], stdin: String? = nil, timeout: Duration = defaultTimeout) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.executable())
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        var environment = ProcessInfo.processInfo.environment
        environment["COLUMNS"] = "200"
        process.environment = environment
        // Files, not pipes: a full pipe cannot stall the child while we wait for it.
        let outPath = directory + "/.stdout-\(UUID().uuidString)"
        let errPath = directory + "/.stderr-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        try Self.waitForExit(process, timeout: timeout, what: arguments)
        try out.close()
        try err.close()
        return Result(
            status: process.terminationStatus,
            stdout: try String(contentsOfFile: outPath, encoding: .utf8),
            stderr: try String(contentsOfFile: errPath, encoding: .utf8))
    }
}

extension Keygen {
    /// Waits until `process` ends, polling with a deadline (Foundation's `waitUntilExit` has no
    /// bound: a keygen that hangs would hang the whole test run). At the deadline the process is
    /// killed and reaped, and the wait throws.
    static func waitForExit(_ process: Process, timeout: Duration, what arguments: [String]) throws {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()  // SIGKILL cannot be ignored: this returns at once
                throw HarnessError("keygen \(arguments.joined(separator: " ")) still ran \(timeout) later; killed")
            }
            usleep(2_000)
        }
    }
}

/// Runs `body` in a fresh scratch directory, removed afterwards.
func withScratchDirectory<R>(_ body: (Keygen, String) throws -> R) throws -> R {
    var template = Array((NSTemporaryDirectory() + "/keygen-test-XXXXXX").utf8CString)
    guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
    let path = String(cString: made)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(Keygen(directory: path), path)
}

func permissions(of path: String) throws -> mode_t {
    var info = stat()
    guard stat(path, &info) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return info.st_mode & 0o7777
}

/// The names in a directory, without the runner's own output files.
func visibleFiles(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }.sorted()
}
