import Foundation
import Glibc
import Testing

/// The harness itself, on `/bin/sh`: the fault tests will lean on every one of these.
@Suite struct ProcessHarnessTests {
    @Test(.timeLimit(.minutes(2)))
    func waitsForLinesAndStopsContinuesAndTerminates() async throws {
        let harness = try ProcessHarness("harness")
        defer { harness.tearDown() }
        let child = try harness.start(executable: "/bin/sh", ["-c", "echo one; echo two >&2; read line; echo got $line; exec sleep 600"],
                                      name: "sh", stdin: try harness.write(Array("input\n".utf8), to: "stdin.txt"))
        #expect(try await child.waitForLine(containing: "one", in: .stdout) == "one")
        try await child.waitForLine(containing: "two")
        try await child.waitForLine(containing: "got input", in: .stdout)

        try await child.stop()
        #expect(child.state == "T")
        #expect(child.isRunning)
        child.resume()
        child.terminate()
        #expect(try await child.waitForExit() == .signaled(SIGTERM))
        #expect(child.state == nil)
    }

    @Test(.timeLimit(.minutes(2)))
    func reportsTheExitStatus() async throws {
        let harness = try ProcessHarness("harness")
        defer { harness.tearDown() }
        let finished = try await harness.run(executable: "/bin/sh", ["-c", "printf 'out'; echo 'Error: bad' >&2; exit 3"], name: "sh")
        #expect(finished.termination == .exited(3))
        #expect(finished.stdoutText == "out")
        #expect(finished.errorLines == ["Error: bad"])
    }

    @Test(.timeLimit(.minutes(2)))
    func aMissedDeadlineShowsWhatTheChildPrinted() async throws {
        let harness = try ProcessHarness("harness")
        defer { harness.tearDown() }
        let child = try harness.start(executable: "/bin/sh", ["-c", "echo almost-there >&2; exec sleep 600"], name: "sh")
        try await child.waitForLine(containing: "almost")
        let error = await #expect(throws: HarnessError.self) {
            try await child.waitForLine(containing: "never", timeout: .milliseconds(200))
        }
        #expect(error?.description.contains("almost-there") == true, "\(String(describing: error))")
        await #expect(throws: HarnessError.self) { try await child.waitForExit(timeout: .milliseconds(100)) }

        // A child that exits without the line fails the wait at once, not at the deadline.
        let quitter = try harness.start(executable: "/bin/sh", ["-c", "echo bye >&2; exit 2"], name: "quitter")
        let started = ContinuousClock.now
        let early = await #expect(throws: HarnessError.self) {
            try await quitter.waitForLine(containing: "never", timeout: .seconds(100))
        }
        #expect(ContinuousClock.now - started < .seconds(100))
        #expect(early?.description.contains("exited with status 2") == true, "\(String(describing: early))")
        #expect(early?.description.contains("bye") == true)
    }

    @Test(.timeLimit(.minutes(2)))
    func tearDownKillsChildrenTheirDescendantsAndStoppedOnes() async throws {
        let harness = try ProcessHarness("harness")
        let parent = try harness.start(executable: "/bin/sh", ["-c", "sleep 600 & echo $!; wait"], name: "parent")
        let line = try await parent.waitForLine(in: .stdout, "a pid") { Int32($0) != nil }
        let grandchild = try #require(pid_t(line))
        let stopped = try harness.start(executable: "/bin/sh", ["-c", "exec sleep 600"], name: "stopped")
        try await stopped.stop()
        #expect(ProcessHarness.descendants(of: parent.pid).contains(grandchild))

        harness.tearDown()
        #expect(parent.termination == .signaled(SIGKILL))
        #expect(stopped.termination == .signaled(SIGKILL))
        #expect(!FileManager.default.fileExists(atPath: harness.directory))
        // Gone, or a zombie waiting for init to reap it: either way no longer running.
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, let state = Self.state(of: grandchild), state != "Z" {
            try await Task.sleep(for: .milliseconds(10))
        }
        let state = Self.state(of: grandchild)
        #expect(state == nil || state == "Z", "the grandchild \(grandchild) still runs (state \(state.map(String.init) ?? "?"))")
        #expect(throws: HarnessError.self) { try harness.start(executable: "/bin/true", [], name: "late") }
    }

    @Test(.timeLimit(.minutes(2)))
    func findsAFreeLoopbackPort() throws {
        let port = try freeLoopbackPort()
        #expect((1024...65535).contains(port))
    }

    private static func state(of pid: pid_t) -> Character? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[close...].dropFirst().first { $0 != " " }
    }
}

extension ProcessHarnessTests {
    /// A child starts as a shell would start it: nothing blocked, whatever thread the test ran on
    /// (Swift concurrency threads block SIGTERM, SIGINT, …, and Foundation's `Process` would pass that on).
    @Test(.timeLimit(.minutes(2)))
    func childrenStartWithNoSignalBlocked() async throws {
        let harness = try ProcessHarness("harness")
        defer { harness.tearDown() }
        let finished = try await harness.run(executable: "/bin/sh", ["-c", "exec grep -E '^Sig(Blk|Ign)' /proc/self/status"], name: "grep")
        #expect(finished.termination == .exited(0))
        #expect(finished.stdoutText.contains("SigBlk:\t0000000000000000"), "\(finished.stdoutText)")
        // Nothing ignored either, but glibc's two internal real-time signals (32, 33).
        #expect(finished.stdoutText.contains("SigIgn:\t0000000180000000") || finished.stdoutText.contains("SigIgn:\t0000000000000000"),
                "\(finished.stdoutText)")
    }
}

extension ProcessHarnessTests {
    /// A child gets stdin, stdout and stderr and nothing else of the test process: a pipe end
    /// left in a daemon would keep another test waiting for an EOF.
    @Test(.timeLimit(.minutes(2)))
    func childrenInheritOnlyTheirStandardDescriptors() async throws {
        let harness = try ProcessHarness("harness")
        defer { harness.tearDown() }
        var leaked: [Int32] = [0, 0]
        #expect(pipe(&leaked) == 0)  // without close-on-exec, on purpose
        defer { leaked.forEach { close($0) } }
        let finished = try await harness.run(executable: "/bin/ls", ["-l", "/proc/self/fd"], name: "fds")
        #expect(finished.termination == .exited(0), "\(finished.transcript)")
        // "lr-x------ 1 root root 64 … 0 -> /dev/null"; ls's own handle on the directory it lists aside.
        let open = finished.stdoutText.split(separator: "\n").filter { $0.contains(" -> ") && !$0.hasSuffix("/fd") }
            .compactMap { $0.components(separatedBy: " -> ").first?.split(separator: " ").last.map(String.init) }
        #expect(open.sorted() == ["0", "1", "2"], "\(finished.transcript)")
        #expect(!finished.stdoutText.contains("pipe:"), "\(finished.transcript)")
    }
}
