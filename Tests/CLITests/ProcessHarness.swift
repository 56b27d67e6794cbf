import Foundation
import Glibc
import Synchronization
import Testing

// Runs the built executables as child processes, the way a user (or an init system) does: output
// captured to files, lines awaited with a deadline, signals sent, exits awaited with a deadline, and
// every child killed when the test ends. Shared by the CLI tests and the fault tests.

/// A harness failure: what was awaited, and what the child printed meanwhile.
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// How a child process ended.
enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    var description: String {
        switch self {
        case .exited(let status): return "exited with status \(status)"
        case .signaled(let signal): return "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
        }
    }
}

/// The executables `swift build` put next to this test bundle.
enum BuiltProduct {
    /// The path of the built executable `name` (`keygen`, `secure-broker`, `smq`): found next to
    /// the test bundle (`.build/<triple>/debug/`) or in the directory `SMQ_BIN_DIR` names.
    static func path(_ name: String) throws -> String {
        if let directory = ProcessInfo.processInfo.environment["SMQ_BIN_DIR"], !directory.isEmpty {
            return directory + "/" + name
        }
        var tried: [String] = []
        let selfPath = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: selfPath).resolvingSymlinksInPath().deletingLastPathComponent()
        while directory.path != "/" {
            for candidate in [name, "debug/" + name, ".build/debug/" + name] {
                let path = directory.appendingPathComponent(candidate).path
                tried.append(path)
                if FileManager.default.isExecutableFile(atPath: path) { return path }
            }
            directory.deleteLastPathComponent()
        }
        throw HarnessError("\(name) not found (tried \(tried.prefix(6))…): run swift build --build-tests first, or set SMQ_BIN_DIR")
    }
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago (bind port 0, read it, close).
/// Another process may take it before it is used; prefer `tcp://127.0.0.1:*` where the
/// program reports the port it bound, and use this where a fixed port is needed (a restart).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket(): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw HarnessError("cannot bind a port on 127.0.0.1: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// One running (or finished) child process, its output in two files.
final class ChildProcess: Sendable, CustomStringConvertible {
    enum Stream: String, Sendable { case stdout, stderr }

    /// How long waits last unless a test says otherwise: generous, as the debug build on two
    /// busy cores can be slow to start; a wait returns as soon as its event happens.
    static let defaultTimeout: Duration = .seconds(30)

    let name: String
    let executable: String
    let arguments: [String]
    let stdoutPath: String
    let stderrPath: String
    let pid: pid_t
    /// Filled in by the first `waitpid` that reaps the child. Until then the child is ours (at
    /// worst a zombie), so its pid cannot be reused and signals cannot hit a stranger.
    private let ending = Mutex<Termination?>(nil)

    fileprivate init(name: String, executable: String, arguments: [String], outputDirectory: String,
                     currentDirectory: String, stdin: String?, environment: [String: String]) throws {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        stdoutPath = outputDirectory + "/" + name + ".stdout"
        stderrPath = outputDirectory + "/" + name + ".stderr"
        var merged = ProcessInfo.processInfo.environment
        merged["COLUMNS"] = "200"  // help text wraps at a known width
        merged.merge(environment) { $1 }
        pid = try Spawn.start(executable: executable, arguments: arguments, environment: merged,
                              currentDirectory: currentDirectory, stdin: stdin ?? "/dev/null",
                              stdout: stdoutPath, stderr: stderrPath)
        OrphanGuard.register(pid)
    }

    var description: String { "\(name) (pid \(pid))" }

    /// How it ended, or nil while it runs (or is stopped). Reaps the child once it has ended.
    var termination: Termination? {
        ending.withLock { ending in
            if ending == nil {
                ending = Spawn.reap(pid)
                if ending != nil { OrphanGuard.unregister(pid) }
            }
            return ending
        }
    }

    var isRunning: Bool { termination == nil }

    /// All it wrote to `stream` so far.
    func data(_ stream: Stream) -> Data {
        FileManager.default.contents(atPath: stream == .stdout ? stdoutPath : stderrPath) ?? Data()
    }

    /// All it wrote to `stream` so far, as text (invalid UTF-8 repaired).
    func output(_ stream: Stream) -> String {
        String(decoding: data(stream), as: UTF8.self)
    }

    /// The lines of `stream` so far; a last line without its newline counts only once the
    /// process has ended (until then it may be half written).
    func lines(_ stream: Stream) -> [String] {
        let ended = termination != nil
        var lines = output(stream).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let last = lines.removeLast()  // "" when the text ends with a newline
        if ended && !last.isEmpty { lines.append(last) }
        return lines
    }

    /// Waits for the `occurrence`-th line of `stream` that contains every one of `parts`.
    /// - Returns: that line.
    /// - Throws: ``HarnessError`` with the captured output when the deadline passes or the
    ///   process ends without printing it.
    @discardableResult
    func waitForLine(containing parts: String..., in stream: Stream = .stderr, occurrence: Int = 1,
                     timeout: Duration = defaultTimeout) async throws -> String {
        try await waitForLine(in: stream, occurrence: occurrence, timeout: timeout,
                              "a line containing \(parts.map { "'\($0)'" }.joined(separator: " and "))") { line in
            parts.allSatisfy { line.contains($0) }
        }
    }

    /// Waits for the `occurrence`-th line of `stream` that `matches`; `what` names it in errors.
    @discardableResult
    func waitForLine(in stream: Stream = .stderr, occurrence: Int = 1, timeout: Duration = defaultTimeout,
                     _ what: String, where matches: (String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            let ended = termination  // read before the output: after an exit the output is complete
            let found = lines(stream).filter(matches)
            if found.count >= occurrence { return found[occurrence - 1] }
            if let ended {
                throw HarnessError("\(self) \(ended) before printing \(what) on \(stream) (found \(found.count) of \(occurrence))\n\(transcript())")
            }
            if ContinuousClock.now >= deadline {
                throw HarnessError("\(self) printed no \(what) on \(stream) within \(timeout) (found \(found.count) of \(occurrence))\n\(transcript())")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until the process ends.
    /// - Returns: how it ended.
    /// - Throws: ``HarnessError`` with the captured output when it still runs at the deadline
    ///   (it is left running: the harness kills it at the end of the test).
    @discardableResult
    func waitForExit(timeout: Duration = defaultTimeout) async throws -> Termination {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let termination { return termination }
            if ContinuousClock.now >= deadline {
                throw HarnessError("\(self) still runs \(timeout) later (state \(state.map(String.init) ?? "?"))\n\(transcript())")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Sends `signal` to the process (not its group) unless it has ended and been reaped.
    func send(_ signal: Int32) {
        guard termination == nil else { return }
        Glibc.kill(pid, signal)
    }

    func terminate() { send(SIGTERM) }
    func interrupt() { send(SIGINT) }
    func kill() { send(SIGKILL) }

    /// Stops the process (SIGSTOP) and returns once the kernel shows it stopped.
    func stop(timeout: Duration = .seconds(5)) async throws {
        send(SIGSTOP)
        let deadline = ContinuousClock.now + timeout
        while state != "T" && state != "t" {
            if let termination { throw HarnessError("\(self) \(termination) instead of stopping\n\(transcript())") }
            if ContinuousClock.now >= deadline { throw HarnessError("\(self) did not stop within \(timeout) (state \(state.map(String.init) ?? "?"))") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Lets a stopped process go on (SIGCONT).
    func resume() { send(SIGCONT) }

    /// The kernel's state letter for the process (`R`, `S`, `T` stopped, `Z` …), nil once reaped.
    var state: Character? {
        guard termination == nil, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[close...].dropFirst().first { $0 != " " }
    }

    /// The command line, how it ended (or that it runs), and the tail of both outputs: for failure messages.
    func transcript(limit: Int = 6000) -> String {
        func tail(_ stream: Stream) -> String {
            let text = output(stream)
            return text.count > limit ? "…" + String(text.suffix(limit)) : text
        }
        let command = ([executable] + arguments).joined(separator: " ")
        return """
            ── \(self): \(termination?.description ?? "running")
            $ \(command)
            ── stdout:
            \(tail(.stdout))
            ── stderr:
            \(tail(.stderr))
            ──
            """
    }

    /// Blocks the thread until the process ends or `timeout` passes: for the cleanup, which
    /// runs where it cannot await.
    fileprivate func blockUntilExit(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while termination == nil {
            if ContinuousClock.now >= deadline { return false }
            usleep(5_000)
        }
        return true
    }
}

/// `posix_spawn`, because Foundation's `Process` passes the spawning thread's signal mask on:
/// started from a Swift concurrency thread (which blocks SIGTERM, SIGINT, SIGHUP …), the child
/// would run with those signals blocked, unlike anything a shell or an init system starts.
enum Spawn {
    /// Starts `executable` in its own process group, with no signal blocked, the usual signals at
    /// their default action, stdio on the given files and no other descriptor inherited.
    /// - Returns: the child's pid.
    static func start(executable: String, arguments: [String], environment: [String: String], currentDirectory: String,
                      stdin: String, stdout: String, stderr: String) throws -> pid_t {
        // O_CLOEXEC: a child spawned by another test at the same moment must not inherit these.
        let input = open(stdin, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw HarnessError("cannot open \(stdin) for stdin: \(String(cString: strerror(errno)))") }
        defer { close(input) }
        let output = open(stdout, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw HarnessError("cannot create \(stdout): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        let error = open(stderr, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard error >= 0 else { throw HarnessError("cannot create \(stderr): \(String(cString: strerror(errno)))") }
        defer { close(error) }
        return try start(executable: executable, arguments: arguments, environment: environment, currentDirectory: currentDirectory,
                         descriptors: (input, output, error))
    }

    /// Starts `executable` with the given descriptors as its stdin, stdout and stderr.
    static func start(executable: String, arguments: [String], environment: [String: String], currentDirectory: String,
                      descriptors: (stdin: Int32, stdout: Int32, stderr: Int32)) throws -> pid_t {
        let (input, output, error) = descriptors
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, error, 2)
        if let closeFrom = GNUSpawnExtensions.addCloseFrom {
            _ = closeFrom(&actions, 3)
        }
        if let chdir = GNUSpawnExtensions.addChdir {
            _ = currentDirectory.withCString { chdir(&actions, $0) }
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var standard = sigset_t()
        sigemptyset(&standard)
        for signal in Int32(1)..<32 where signal != SIGKILL && signal != SIGSTOP { sigaddset(&standard, signal) }
        posix_spawnattr_setsigdefault(&attributes, &standard)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else { throw HarnessError("cannot start \(executable): \(String(cString: strerror(status)))") }
        return pid
    }

    /// `waitpid` without blocking: how the child ended, or nil while it runs.
    static func reap(_ pid: pid_t) -> Termination? {
        var status: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &status, WNOHANG) } while result == -1 && errno == EINTR
        if result == 0 { return nil }
        guard result == pid else {
            // ECHILD: reaped elsewhere (SIGCHLD ignored?). It has ended; how is lost.
            Issue.record("waitpid(\(pid)): \(String(cString: strerror(errno)))")
            return .exited(-1)
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }
}

/// glibc's posix_spawn extensions, which Swift's Glibc module does not declare (no _GNU_SOURCE).
private enum GNUSpawnExtensions {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32

    /// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34): close every other descriptor.
    static let addCloseFrom: AddCloseFrom? = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np")
        .map { unsafeBitCast($0, to: AddCloseFrom.self) }
    /// `posix_spawn_file_actions_addchdir_np` (glibc 2.29).
    static let addChdir: AddChdir? = dlsym(nil, "posix_spawn_file_actions_addchdir_np")
        .map { unsafeBitCast($0, to: AddChdir.self) }
}

/// Kills the children of a test process that dies without tearing its harnesses down (killed by
/// a timeout or a signal, crashed): a watchdog shell reads a pipe only this process can write to;
/// at EOF (this process is gone) it kills the process group of every child still registered.
/// A child is registered (a file named by its pid, which leads its own group) from its start
/// until it is reaped, so the watchdog never signals a reused pid.
enum OrphanGuard {
    static let registry: String? = start()

    static func register(_ pid: pid_t) {
        guard let registry else { return }
        _ = FileManager.default.createFile(atPath: "\(registry)/\(pid)", contents: nil)
    }

    static func unregister(_ pid: pid_t) {
        guard let registry else { return }
        unlink("\(registry)/\(pid)")
    }

    private static func start() -> String? {
        var template = Array((NSTemporaryDirectory() + "/smq-children-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { return nil }
        let registry = String(cString: made)
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { return nil }
        // Close-on-exec at once: no child may hold the write end, or EOF would never come.
        _ = fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC)
        let devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer {
            close(pipeEnds[0])
            close(devNull)
        }
        let script = """
            read _ignored
            # (dash's kill takes no "--"; "-PID" after the signal is a process group)
            for child in "$1"/*; do [ -e "$child" ] && kill -KILL "-${child##*/}" 2>/dev/null; done
            rm -rf "$1"
            """
        guard (try? Spawn.start(executable: "/bin/sh", arguments: ["-c", script, "smq-orphan-guard", registry],
                                environment: ["PATH": "/usr/bin:/bin"], currentDirectory: "/",
                                descriptors: (pipeEnds[0], devNull, devNull))) != nil else {
            close(pipeEnds[1])
            return nil
        }
        // pipeEnds[1] stays open for the life of this process, on purpose.
        return registry
    }
}

/// What a finished run left: how it ended and what it printed.
struct Finished: Sendable {
    let child: ChildProcess
    let termination: Termination
    let stdout: Data
    let stderr: String

    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }

    /// The lines of stderr that start with `Error: `.
    var errorLines: [String] {
        stderr.split(separator: "\n").map(String.init).filter { $0.hasPrefix("Error: ") }
    }

    var transcript: String { child.transcript() }
}

/// A scratch directory and the child processes of one test. Every child still running when the
/// test ends is killed (with its descendants) by ``tearDown()``: call it in a `defer` right
/// after making the harness; `deinit` does it as a last resort.
final class ProcessHarness: Sendable {
    /// A fresh directory for this test's files (keys, payloads, outputs), removed by ``tearDown()``
    /// unless `SMQ_KEEP_TEST_DIRS` is set.
    let directory: String
    private let state = Mutex<State>(State())

    private struct State {
        var children: [ChildProcess] = []
        var names: [String: Int] = [:]
        var tornDown = false
    }

    init(_ label: String = "cli") throws {
        var template = Array((NSTemporaryDirectory() + "/smq-\(label)-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError("mkdtemp: \(String(cString: strerror(errno)))") }
        directory = String(cString: made)
        try FileManager.default.createDirectory(atPath: directory + "/logs", withIntermediateDirectories: true)
    }

    deinit { tearDown() }

    /// Starts a built product (`secure-broker`, `smq`, `keygen`).
    /// - Parameters:
    ///   - name: names its output files (`logs/NAME.stdout`, `.stderr`) and its messages; made
    ///     unique (`broker-2`) when a test starts a second child of the same name.
    ///   - stdin: a file to read stdin from (default: /dev/null).
    ///   - environment: variables added to this process's environment.
    func start(_ product: String, _ arguments: [String], name: String? = nil, stdin: String? = nil,
               environment: [String: String] = [:]) throws -> ChildProcess {
        try start(executable: try BuiltProduct.path(product), arguments, name: name ?? product, stdin: stdin, environment: environment)
    }

    /// Starts any executable, by path.
    func start(executable: String, _ arguments: [String], name: String, stdin: String? = nil,
               environment: [String: String] = [:]) throws -> ChildProcess {
        let unique = state.withLock { state -> String? in
            guard !state.tornDown else { return nil }
            state.names[name, default: 0] += 1
            let count = state.names[name]!
            return count == 1 ? name : "\(name)-\(count)"
        }
        guard let unique else { throw HarnessError("the harness was torn down; cannot start \(name)") }
        let child = try ChildProcess(name: unique, executable: executable, arguments: arguments, outputDirectory: directory + "/logs",
                                     currentDirectory: directory, stdin: stdin, environment: environment)
        state.withLock { $0.children.append(child) }
        return child
    }

    /// Runs a built product to its end.
    /// - Returns: how it ended and what it printed, whatever the status.
    /// - Throws: ``HarnessError`` when it still runs at the deadline.
    func run(_ product: String, _ arguments: [String], name: String? = nil, stdin: String? = nil,
             environment: [String: String] = [:], timeout: Duration = ChildProcess.defaultTimeout) async throws -> Finished {
        let child = try start(product, arguments, name: name, stdin: stdin, environment: environment)
        let termination = try await child.waitForExit(timeout: timeout)
        return Finished(child: child, termination: termination, stdout: child.data(.stdout), stderr: child.output(.stderr))
    }

    /// Runs any executable, by path, to its end.
    func run(executable: String, _ arguments: [String], name: String, stdin: String? = nil,
             timeout: Duration = ChildProcess.defaultTimeout) async throws -> Finished {
        let child = try start(executable: executable, arguments, name: name, stdin: stdin)
        let termination = try await child.waitForExit(timeout: timeout)
        return Finished(child: child, termination: termination, stdout: child.data(.stdout), stderr: child.output(.stderr))
    }

    /// The children started so far.
    var children: [ChildProcess] { state.withLock { $0.children } }

    /// Kills every child still running, and their descendants (`smq demo` starts its own), waits
    /// for them, and removes the directory. Idempotent.
    func tearDown() {
        let children = state.withLock { state -> [ChildProcess] in
            if state.tornDown { return [] }
            state.tornDown = true
            return state.children
        }
        let running = children.filter(\.isRunning)
        // Find the descendants first: once a parent dies they belong to init and cannot be told apart.
        let descendants = running.flatMap { Self.descendants(of: $0.pid) }
        for child in running {
            child.send(SIGKILL)
            Glibc.kill(-child.pid, SIGKILL)  // its process group: what it started without a group of its own
        }
        for pid in descendants { Glibc.kill(pid, SIGKILL) }
        for child in running where !child.blockUntilExit(timeout: .seconds(10)) {
            Issue.record("\(child) survived SIGKILL for 10 s")
        }
        if ProcessInfo.processInfo.environment["SMQ_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Every process whose parent chain leads to `root`, from /proc.
    static func descendants(of root: pid_t) -> [pid_t] {
        var parents: [pid_t: pid_t] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "(comm)": state, then ppid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { parents[pid] = parent }
        }
        var found: [pid_t] = []
        var frontier = [root]
        while let parent = frontier.popLast() {
            let children = parents.filter { $0.value == parent }.map(\.key)
            found += children
            frontier += children
        }
        return found
    }
}
