import Foundation
import Glibc
import Synchronization
import Testing

// Hosts for the tests of several brokers (issue 12): Linux network namespaces joined by a bridge,
// made and removed by the tests themselves with iproute2, so brokers, workers and clients run on
// "hosts" with their own addresses and links that can be cut. Needs root (CI runs as root here);
// where namespaces cannot be made, `HostNetwork.init` throws `HostNetworkUnavailable` and the tests
// run their loopback variant instead, saying so.

/// Namespaces cannot be made here (not root, no iproute2, a kernel or container that refuses).
struct HostNetworkUnavailable: Error, CustomStringConvertible {
    let description: String
}

/// One host of a ``HostNetwork``: a network namespace with loopback up and one veth into the
/// network's bridge.
struct NetworkHost: Sendable, CustomStringConvertible {
    /// The short name the test gave it (`b1`, `w2`, `client`).
    let name: String
    /// The namespace's name (`smqnet-PID-SEQ-NAME`), what `ip netns exec` takes.
    let namespace: String
    /// Its address on the network's subnet (`10.213.0.11`).
    let address: String
    /// Its cable's end in the bridge's namespace: set down, the host is cut off.
    let port: String

    var description: String { "\(name) (\(address), netns \(namespace))" }

    /// `tcp://ADDRESS:PORT`.
    func endpoint(_ port: Int) -> String { "tcp://\(address):\(port)" }
}

/// A private network of namespace hosts on one bridge.
///
/// The bridge lives in a namespace of its own and every address is on 10.213.0.0/24 inside these
/// namespaces only: nothing is added to the machine's own network, and two networks (parallel
/// tests, parallel runs) cannot see each other even though their addresses are the same. Every
/// namespace is named `smqnet-PID-SEQ-…` after the test process: making a network first removes
/// the namespaces of processes that no longer run (a run killed before its tear-down), and
/// never those of a run still going.
///
/// Call ``tearDown()`` in a `defer` right after making it, after the harness's tear-down (so the
/// processes inside are gone first); `deinit` does it as a last resort.
final class HostNetwork: Sendable {
    static let prefix = "smqnet-"
    /// The subnet's first three octets; host N gets `.(10 + N)`.
    static let subnet = "10.213.0"
    private static let sequence = Atomic<Int>(0)

    /// `smqnet-PID-SEQ`: this network's namespaces start with it.
    let runID: String
    /// The namespace that holds the bridge (`br0`) and the host end of every cable.
    let bridgeNamespace: String
    private let state = Mutex<State>(State())

    private struct State {
        var hosts: [NetworkHost] = []
        /// Names and numbers are handed out under the lock, before the host is made.
        var names: Set<String> = []
        var tornDown = false
    }

    /// Makes the bridge's namespace and its bridge, after removing what crashed runs left.
    /// - Throws: ``HostNetworkUnavailable`` when namespaces, bridges or veth pairs cannot be made
    ///   here (the tests then run their loopback variant).
    init() throws {
        guard geteuid() == 0 else {
            throw HostNetworkUnavailable(description: "network namespaces need root (euid \(geteuid()))")
        }
        guard IPCommand.path != nil else {
            throw HostNetworkUnavailable(description: "no ip command (iproute2) in /usr/sbin, /sbin, /usr/bin or /bin: scripts/ensure-deps --test installs it")
        }
        Self.removeStaleNamespaces()
        runID = "\(Self.prefix)\(getpid())-\(Self.sequence.add(1, ordering: .relaxed).newValue)"
        bridgeNamespace = runID + "-br"
        do {
            try IPCommand.run(["netns", "add", bridgeNamespace])
        } catch {
            throw HostNetworkUnavailable(description: "cannot make a network namespace: \(error)")
        }
        // A kernel or container without bridges or veth pairs refuses here, not halfway
        // through a test: that too means "no namespace hosts", and the loopback variant runs.
        do {
            try IPCommand.run(["-n", bridgeNamespace, "link", "set", "lo", "up"])
            try IPCommand.run(["-n", bridgeNamespace, "link", "add", "br0", "type", "bridge"])
            try IPCommand.run(["-n", bridgeNamespace, "link", "set", "br0", "up"])
            try IPCommand.run(["-n", bridgeNamespace, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
            try IPCommand.run(["-n", bridgeNamespace, "link", "delete", "probe0"])
        } catch {
            tearDown()
            throw HostNetworkUnavailable(description: "cannot make a bridge and veth pairs in a network namespace: \(error)")
        }
    }

    deinit { tearDown() }

    /// The hosts made so far.
    var hosts: [NetworkHost] { state.withLock { $0.hosts } }

    /// Makes a host: a namespace with loopback up, an address on the subnet and a cable
    /// (veth pair) into the bridge.
    /// - Parameter name: short, letters and digits (it names the cable's end, at most 15 bytes).
    @discardableResult
    func addHost(_ name: String) throws -> NetworkHost {
        let number = try state.withLock { state -> Int in
            guard !state.tornDown else { throw HarnessError("the network \(runID) was torn down; cannot add \(name)") }
            guard state.names.count < 200 else { throw HarnessError("a HostNetwork holds at most 200 hosts") }
            guard state.names.insert(name).inserted else { throw HarnessError("a host named \(name) exists already") }
            return state.names.count
        }
        let port = "p\(number)-" + name.prefix(10)
        let host = NetworkHost(name: name, namespace: "\(runID)-\(name)", address: "\(Self.subnet).\(10 + number)", port: port)
        try IPCommand.run(["netns", "add", host.namespace])
        // Recorded before the rest, so a failure below still tears the namespace down.
        state.withLock { $0.hosts.append(host) }
        try IPCommand.run(["-n", host.namespace, "link", "set", "lo", "up"])
        try IPCommand.run(["-n", host.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", bridgeNamespace])
        try IPCommand.run(["-n", host.namespace, "address", "add", host.address + "/24", "dev", "eth0"])
        try IPCommand.run(["-n", host.namespace, "link", "set", "eth0", "up"])
        try IPCommand.run(["-n", bridgeNamespace, "link", "set", port, "master", "br0"])
        try IPCommand.run(["-n", bridgeNamespace, "link", "set", port, "up"])
        return host
    }

    /// Pulls the host's cable out at the bridge: its packets go nowhere and nothing reaches it;
    /// its processes run on, and their connections see only silence (no reset, no FIN).
    func cut(_ host: NetworkHost) throws {
        try IPCommand.run(["-n", bridgeNamespace, "link", "set", host.port, "down"])
    }

    /// Plugs the cable back in.
    func restore(_ host: NetworkHost) throws {
        try IPCommand.run(["-n", bridgeNamespace, "link", "set", host.port, "up"])
    }

    /// The command line that runs `executable arguments…` inside `host`'s namespace: `ip netns
    /// exec` execs the program itself (no fork), so the pid a harness gets is the program's.
    func command(in host: NetworkHost, _ executable: String, _ arguments: [String]) throws -> (executable: String, arguments: [String]) {
        guard let ip = IPCommand.path else { throw HarnessError("no ip command") }
        return (ip, ["netns", "exec", host.namespace, executable] + arguments)
    }

    /// Kills every process still inside this network's namespaces, then removes the namespaces
    /// (removing the bridge's namespace removes every cable). Idempotent; errors are recorded
    /// as issues, not thrown, since it runs from `defer`.
    func tearDown() {
        let hosts = state.withLock { state -> [NetworkHost]? in
            if state.tornDown { return nil }
            state.tornDown = true
            return state.hosts
        }
        guard let hosts else { return }
        for namespace in hosts.map(\.namespace) + [bridgeNamespace] {
            if let failure = Self.remove(namespace) { Issue.record("\(failure)") }
        }
    }

    /// The namespaces of this machine whose names start with `prefix`.
    static func namespaces(startingWith prefix: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).filter { $0.hasPrefix(prefix) }.sorted()
    }

    /// Removes `smqnet-PID-…` namespaces whose PID no longer runs: what a run killed before its
    /// tear-down left. Those of live processes (a parallel run) are left alone.
    static func removeStaleNamespaces() {
        for namespace in namespaces(startingWith: prefix) {
            let fields = namespace.dropFirst(prefix.count).split(separator: "-")
            guard let owner = fields.first.flatMap({ pid_t($0) }), owner > 0 else { continue }
            if owner == getpid() { continue }
            if kill(owner, 0) == 0 || errno == EPERM { continue }  // still running
            _ = remove(namespace)
        }
    }

    /// Kills what runs inside `namespace` (SIGKILL) and removes it.
    /// - Returns: nil, or what went wrong.
    private static func remove(_ namespace: String) -> String? {
        guard FileManager.default.fileExists(atPath: "/run/netns/" + namespace) else { return nil }
        if let pids = try? IPCommand.run(["netns", "pids", namespace]) {
            for pid in pids.split(whereSeparator: \.isWhitespace).compactMap({ pid_t($0) }) where pid > 1 && pid != getpid() {
                kill(pid, SIGKILL)
            }
        }
        do {
            try IPCommand.run(["netns", "delete", namespace])
            return nil
        } catch {
            return "cannot remove network namespace \(namespace): \(error)"
        }
    }
}

/// Runs `ip` (iproute2) to its end, synchronously: the network is set up and torn down where no
/// `await` is possible (`init`, `defer`), and each command takes milliseconds.
enum IPCommand {
    static let path: String? = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs `ip ARGUMENTS…`, at most `timeout`.
    /// - Returns: what it printed on stdout.
    /// - Throws: ``HarnessError`` with its stderr when it fails or outlives the timeout.
    @discardableResult
    static func run(_ arguments: [String], timeout: Duration = .seconds(10)) throws -> String {
        guard let path else { throw HarnessError("no ip command (iproute2)") }
        let directory = NSTemporaryDirectory() + "/smq-ip-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pid = try Spawn.start(executable: path, arguments: arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
                                  currentDirectory: "/", stdin: "/dev/null", stdout: directory + "/out", stderr: directory + "/err")
        let deadline = ContinuousClock.now + timeout
        var ended = Spawn.reap(pid)
        while ended == nil {
            if ContinuousClock.now >= deadline {
                kill(pid, SIGKILL)
                while Spawn.reap(pid) == nil { usleep(1_000) }
                throw HarnessError("ip \(arguments.joined(separator: " ")) still ran after \(timeout); killed")
            }
            usleep(1_000)
            ended = Spawn.reap(pid)
        }
        let output = (try? String(contentsOfFile: directory + "/out", encoding: .utf8)) ?? ""
        guard ended == .exited(0) else {
            let error = ((try? String(contentsOfFile: directory + "/err", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            throw HarnessError("ip \(arguments.joined(separator: " ")) \(ended!): \(error)")
        }
        return output
    }
}

extension ProcessHarness {
    /// Starts a built product (`secure-broker`, `smq`) inside `host`'s namespace.
    func start(_ product: String, _ arguments: [String], on host: NetworkHost, network: HostNetwork, name: String,
               environment: [String: String] = [:]) throws -> ChildProcess {
        let command = try network.command(in: host, try BuiltProduct.path(product), arguments)
        return try start(executable: command.executable, command.arguments, name: name, environment: environment)
    }
}
