import Foundation
import Glibc
import Testing

/// The namespace network itself: hosts reach each other by address, a cut link stops that and
/// a restored one brings it back, and nothing is left behind, by this run or a crashed one.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct HostNetworkTests {
    /// A network; where namespaces cannot be made, the test is cancelled (reported as skipped)
    /// with a line saying why.
    func network() throws -> HostNetwork {
        do {
            return try HostNetwork()
        } catch let error as HostNetworkUnavailable {
            print("[host-network] NOT RUN: network namespaces unavailable (\(error))")
            try Test.cancel("needs network namespaces: \(error)")
        }
    }

    @Test func aBrokerOnOneHostAnswersAnotherUntilItsLinkIsCutAndAgainOnceRestored() async throws {
        let network = try network()
        let harness = try ProcessHarness("host-network")
        defer {
            harness.tearDown()
            network.tearDown()
        }
        let certs = try TestCertificates(in: harness.directory)
        let client = try certs.client("client-1")
        let brokerHost = try network.addHost("b1")
        let clientHost = try network.addHost("client")
        #expect(brokerHost.address != clientHost.address)
        let broker = try harness.start("secure-broker", ["--endpoint", brokerHost.endpoint(5555), "--cert", certs.broker.secretPath,
                                                         "--allowlist", certs.allowlist], on: brokerHost, network: network, name: "broker")
        try await broker.waitUntilListening(on: brokerHost.endpoint(5555))
        // A short connect timeout only where no answer is expected: a loaded machine may take
        // seconds to start the debug build and finish a handshake.
        func ping(_ name: String, connectTimeout: Int = 10) async throws -> Finished {
            let child = try harness.start("smq", ["ping", "--broker", brokerHost.endpoint(5555), "--broker-key", certs.broker.publicPath,
                                                  "--cert", client.secretPath, "--connect-timeout", "\(connectTimeout)"],
                                          on: clientHost, network: network, name: name)
            let ended = try await child.waitForExit(timeout: .seconds(30))
            return Finished(child: child, termination: ended, stdout: child.data(.stdout), stderr: child.output(.stderr))
        }
        let answered = try await ping("ping")
        #expect(answered.termination.succeeded, "\(answered.transcript)")
        #expect(answered.stdoutText.contains("pong from \(brokerHost.endpoint(5555))"))

        // Nothing of it is in this machine's own namespace: the cables end in the bridge's.
        let links = try IPCommand.run(["-o", "link", "show"])
        #expect(!links.contains(brokerHost.port + "@") && !links.contains(clientHost.port + "@"), "\(links)")

        try network.cut(brokerHost)
        let unanswered = try await ping("ping-cut", connectTimeout: 2)
        #expect(!unanswered.termination.succeeded, "the broker answered through a cut link\n\(unanswered.transcript)")
        #expect(broker.isRunning)

        try network.restore(brokerHost)
        let again = try await ping("ping-restored")
        #expect(again.termination.succeeded, "\(again.transcript)")
    }

    @Test func tearDownRemovesEveryNamespaceAndKillsWhatRanInside() async throws {
        let network = try network()
        let host = try network.addHost("h1")
        // A process started by nobody's harness: only the network's tear-down can end it.
        let command = try network.command(in: host, "/bin/sleep", ["600"])
        let pid = try Spawn.start(executable: command.executable, arguments: command.arguments, environment: [:], currentDirectory: "/",
                                  stdin: "/dev/null", stdout: "/dev/null", stderr: "/dev/null")
        var ended: Termination?
        defer {
            network.tearDown()
            if ended == nil {  // the test failed first
                Glibc.kill(pid, SIGKILL)
                while Spawn.reap(pid) == nil { usleep(1_000) }
            }
        }
        #expect(HostNetwork.namespaces(startingWith: network.runID).count == 2)
        // Until `ip netns exec` has entered the namespace, the process is not in it to be found.
        try await waitUntil("sleep inside \(host.namespace)") {
            (try? IPCommand.run(["netns", "pids", host.namespace]))?.split(whereSeparator: \.isWhitespace).contains { pid_t($0) == pid } == true
        }
        network.tearDown()
        #expect(HostNetwork.namespaces(startingWith: network.runID).isEmpty)
        let deadline = ContinuousClock.now + .seconds(10)
        ended = Spawn.reap(pid)
        while ended == nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
            ended = Spawn.reap(pid)
        }
        #expect(ended == .signaled(SIGKILL))
    }

    @Test func aNewNetworkRemovesTheNamespacesACrashedRunLeft() async throws {
        try network().tearDown()
        // A pid that ran and ended: the namespace of a run killed before its tear-down.
        let gone = try Spawn.start(executable: "/bin/true", arguments: [], environment: [:], currentDirectory: "/",
                                   stdin: "/dev/null", stdout: "/dev/null", stderr: "/dev/null")
        while Spawn.reap(gone) == nil { try await Task.sleep(for: .milliseconds(5)) }
        let stale = "\(HostNetwork.prefix)\(gone)-1-b1"
        // One of a run that still goes (this process's parent) must stay.
        let alive = "\(HostNetwork.prefix)\(getppid())-999-b1"
        try IPCommand.run(["netns", "add", stale])
        try IPCommand.run(["netns", "add", alive])
        defer { _ = try? IPCommand.run(["netns", "delete", alive]) }
        let network = try HostNetwork()
        defer { network.tearDown() }
        #expect(!HostNetwork.namespaces(startingWith: HostNetwork.prefix).contains(stale))
        #expect(HostNetwork.namespaces(startingWith: HostNetwork.prefix).contains(alive))
    }
}

fileprivate extension ChildProcess {
    /// Waits until a broker logs that it listens on `endpoint`.
    func waitUntilListening(on endpoint: String) async throws {
        try await waitForLine(containing: "listening", "endpoints=\(endpoint)")
    }
}
