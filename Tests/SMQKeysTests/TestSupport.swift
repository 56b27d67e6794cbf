import Foundation
import Glibc
import Logging
import Synchronization
import Testing
@testable import SMQKeys

/// Runs `body` with a fresh directory under the system's temporary directory, removed afterwards.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    let path = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

func withTemporaryDirectory<R>(_ body: (String) async throws -> R) async throws -> R {
    let path = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

private func makeTemporaryDirectory() throws -> String {
    var template = Array((NSTemporaryDirectory() + "/smqkeys-test-XXXXXX").utf8CString)
    guard let result = mkdtemp(&template) else {
        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    return String(cString: result)
}

/// Writes text to a file with the given mode (exactly, whatever the umask).
func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    guard chmod(path, mode) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
}

/// Makes a directory of mode 0755 exactly, whatever the umask (an allowlist directory that others
/// can write is refused).
func makeDirectory(_ path: String) throws {
    guard mkdir(path, 0o755) == 0, chmod(path, 0o755) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
}

func readFile(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

func permissions(of path: String) throws -> mode_t {
    var info = stat()
    guard stat(path, &info) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return info.st_mode & 0o7777
}

/// Runs a program to completion and returns its exit status and output.
/// - Throws: when it cannot start, or still runs after `timeout` (it is then killed).
func runProgram(_ executable: String, _ arguments: [String], in directory: String? = nil,
                timeout: Duration = .seconds(60)) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    // Files, not pipes: a full pipe cannot stall the child while we wait for it.
    let outPath = NSTemporaryDirectory() + "/smqkeys-out-\(UUID().uuidString)"
    let errPath = outPath + ".err"
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
    try process.run()
    // Bounded: Foundation's waitUntilExit has none, and a hung peer would hang the whole run.
    let deadline = ContinuousClock.now + timeout
    while process.isRunning {
        if ContinuousClock.now >= deadline {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()  // SIGKILL cannot be ignored: this returns at once
            throw POSIXError(.ETIMEDOUT, userInfo: [NSLocalizedDescriptionKey: "\(executable) \(arguments) still ran \(timeout) later; killed"])
        }
        usleep(2_000)
    }
    try out.close()
    try err.close()
    return (process.terminationStatus, try readFile(outPath), try readFile(errPath))
}

/// The package root: three levels above this file (Tests/SMQKeysTests/TestSupport.swift).
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// Collects log records so a test can assert what was logged, and how (metadata, not text).
final class CapturedLogs: Sendable {
    struct Record: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    private let storage = Mutex<[Record]>([])

    var records: [Record] { storage.withLock { $0 } }

    func append(_ record: Record) { storage.withLock { $0.append(record) } }

    var logger: Logger {
        Logger(label: "test") { _ in Handler(sink: self) }
    }

    struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var flat: [String: String] = [:]
            for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
                flat[key] = "\(value)"
            }
            sink.append(Record(level: event.level, message: "\(event.message)", metadata: flat))
        }
    }
}

/// A valid public certificate file's text, with optional metadata lines (already formatted).
func publicFileText(_ key: PublicKey, metadataLines: [String] = []) -> String {
    (["metadata"] + metadataLines + ["curve", "    public-key = \"\(key.z85)\""]).joined(separator: "\n") + "\n"
}
