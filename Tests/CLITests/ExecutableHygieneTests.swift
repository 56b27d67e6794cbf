import Foundation
import Glibc
import Testing

// Bugs found in the executables (and fixed), kept as tests of the behaviour we want.

@Suite struct ExecutableHygieneTests {
    /// `smq submit -` copies stdin to `$TMPDIR/smq-stdin-PID` (Sources/smq/SubmitCommand.swift):
    /// created with the default mode (0644: anyone on the machine can read the payload) and, when
    /// the submit fails, left behind, since `fail()` calls `exit(1)` and skips the `defer` that
    /// removes it.
    @Test(.timeLimit(.minutes(2)))
    func aStdinSpoolIsPrivateAndRemovedWhenTheSubmitFails() async throws {
        let harness = try ProcessHarness("spool")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        // stdin is a FIFO this test writes to, so the spool can be looked at while smq reads.
        let fifo = harness.directory + "/stdin.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let writer = open(fifo, O_RDWR | O_CLOEXEC)  // O_RDWR: opening does not wait for a reader
        #expect(writer >= 0)
        var writerOpen = true
        defer { if writerOpen { close(writer) } }

        let endpoint = "tcp://127.0.0.1:\(try freeLoopbackPort())"  // nothing listens: the submit fails
        let submit = try harness.start("smq", [
            "submit", "-", "--quiet", "--connect-timeout", "1",
            "--broker", endpoint, "--broker-key", certs.broker.publicPath, "--cert", client.secretPath,
        ], name: "submit", stdin: fifo, environment: ["TMPDIR": temporary])
        let secret = Array("confidential payload\n".utf8)
        #expect(write(writer, secret, secret.count) == secret.count)

        var spool: String?
        let deadline = ContinuousClock.now + .seconds(30)
        while spool == nil, ContinuousClock.now < deadline, submit.isRunning {
            spool = try FileManager.default.contentsOfDirectory(atPath: temporary).first.map { temporary + "/" + $0 }
            if spool == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        let path = try #require(spool, "smq never spooled stdin under TMPDIR\n\(submit.transcript())")
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o077 == 0, "the stdin spool must be private (mode \(String(info.st_mode & 0o777, radix: 8)))")

        close(writer)
        writerOpen = false
        let ended = try await submit.waitForExit()
        #expect(ended == .exited(1), "\(submit.transcript())")
        let left = try FileManager.default.contentsOfDirectory(atPath: temporary)
        #expect(left.isEmpty, "a failed submit must not leave its stdin spool, the whole payload, behind: \(left)")
    }

    /// Ctrl-C on `smq demo` (Sources/smq/DemoCommand.swift): the terminal's SIGINT reaches the
    /// demo only (Foundation's Process starts the broker and workers in process groups of their
    /// own), the demo does not catch it, so its `defer` never stops them: the broker and three
    /// workers run on, children of init, beside a temporary directory holding every secret key.
    @Test(.timeLimit(.minutes(2)))
    func interruptingTheDemoStopsItsBrokerAndWorkers() async throws {
        let harness = try ProcessHarness("demo-interrupt")
        defer { harness.tearDown() }
        let temporary = harness.directory + "/tmp"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        let demo = try harness.start("smq", ["demo", "--size", "64M", "--delay-ms", "200"], environment: ["TMPDIR": temporary])
        try await demo.waitForLine(containing: "3. submitting", in: .stdout, timeout: .seconds(60))
        let started = ProcessHarness.descendants(of: demo.pid).filter { Self.isSecureMQ($0) }
        #expect(started.count == 4, "the broker and 3 workers: \(started)\n\(demo.transcript())")

        demo.interrupt()
        _ = try await demo.waitForExit()
        var survivors = started
        let deadline = ContinuousClock.now + .seconds(5)
        while !survivors.isEmpty, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            survivors = survivors.filter { Self.isSecureMQ($0) }
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: temporary)
        #expect(survivors.isEmpty, "after SIGINT the demo's broker and workers still run: pids \(survivors)")
        #expect(left.isEmpty, "the demo's keys are left behind: \(left)")
        // They are init's children now, out of the harness's reach.
        for pid in survivors where Self.isSecureMQ(pid) { Glibc.kill(pid, SIGKILL) }
    }

    /// A live (not zombie) `secure-broker` or `smq` process.
    private static func isSecureMQ(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")"), stat[close...].dropFirst().first(where: { $0 != " " }) != "Z",
              let command = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8) else { return false }
        let program = command.split(separator: "\0").first.map { URL(fileURLWithPath: String($0)).lastPathComponent }
        return program == "secure-broker" || program == "smq"
    }
}
