import DequeModule
import Logging
@testable import SMQBroker
import SMQKeys
import SMQProtocol

/// A message the harness hands the core as a body: the bytes, owned, so the core's "forward this
/// kept message" can be checked against what was sent. The core never reads it.
final class TestBody {
    var bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// Records every effect; peers can be made "full" (not reading) or "gone".
final class RecordingSink: BrokerSink {
    enum Effect {
        case work(address: [UInt8], tag: UInt64, body: TestBody)
        case result(address: [UInt8], tag: UInt64, body: TestBody)
        case control(address: [UInt8], message: ControlMessage?, bytes: [UInt8])
    }

    var effects: [Effect] = []
    var full: Set<[UInt8]> = []
    var gone: Set<[UInt8]> = []
    var drainedCount = 0

    func forward(_ body: AnyObject, as command: Command, tag: UInt64, keep: Bool, to address: [UInt8]) -> SendOutcome {
        if gone.contains(address) { return .gone }
        if full.contains(address) { return .full }
        let body = body as! TestBody
        body.bytes.withUnsafeMutableBytes { Fragment.rewriteCommandAndTag(in: $0, command: command, tag: tag) }
        effects.append(command == .work ? .work(address: address, tag: tag, body: body) : .result(address: address, tag: tag, body: body))
        return .sent
    }

    func send(_ bytes: [UInt8], to address: [UInt8]) -> SendOutcome {
        if gone.contains(address) { return .gone }
        if full.contains(address) { return .full }
        let parsed: ControlMessage? = bytes.withUnsafeBytes { raw in
            (try? Message.parse(raw, limits: .default)).flatMap { ControlMessage($0) }
        }
        effects.append(.control(address: address, message: parsed, bytes: bytes))
        return .sent
    }

    func drained() { drainedCount += 1 }

    func take() -> [Effect] {
        defer { effects.removeAll() }
        return effects
    }
}

extension BrokerRules {
    /// Small numbers so bounds are reached in a few events.
    static var small: BrokerRules {
        var rules = BrokerRules()
        rules.maxFragment = 4096
        rules.byteBudget = 64 * 1024
        rules.maxFragments = 1000
        rules.logInterval = 1_000_000_000
        // Clients in these tests do not PING; the tests that are about silence set it back.
        rules.heartbeatInterval = 60_000_000_000
        return rules
    }
}

/// Drives a ``BrokerCore`` with a manual clock and a recording sink: no socket anywhere.
final class CoreHarness {
    let lines = LineCounter()
    var clock: UInt64 = 1_000_000_000
    let sink = RecordingSink()
    var entries: [PublicKey: AllowlistEntry] = [:]
    private(set) var core: BrokerCore!
    private var names: [String: PublicKey] = [:]
    private var nextAddress: UInt8 = 1
    private var serial: UInt8 = 1

    init(rules: BrokerRules = .small) {
        let lines = self.lines
        var logger = Logger(label: "test.core") { _ in CountingLogHandler(lines: lines) }
        logger.logLevel = .trace
        core = BrokerCore(rules: rules, sink: sink, logger: logger) { [unowned self] in self.entries[$0] }
    }

    /// Puts a key on the allowlist (or changes its entry).
    @discardableResult
    func allow(_ name: String, role: String, weight: Int = 1, services: String? = nil) -> PublicKey {
        let key = names[name] ?? {
            defer { serial &+= 1 }
            return try! PublicKey(bytes: [serial] + [UInt8](repeating: 7, count: 31))
        }()
        names[name] = key
        var pairs = [("role", role), ("weight", "\(weight)"), ("name", name)]
        if let services { pairs.append(("services", services)) }
        entries[key] = try! AllowlistEntry(certificate: Certificate(publicKey: key, metadata: CertificateMetadata(pairs)))
        return key
    }

    func revoke(_ name: String) {
        entries[names[name]!] = nil
        core.allowlistChanged(now: clock)
    }

    func connect(_ name: String) -> PeerConnection {
        let address: [UInt8] = [0, nextAddress]
        nextAddress &+= 1
        return core.admit(id: RoutingID(address), address: address, userID: names[name]!.z85, now: clock)!
    }

    /// A client connection, its key allowed as a client.
    func client(_ name: String, services: String? = nil) -> PeerConnection {
        allow(name, role: "client", services: services)
        return connect(name)
    }

    /// A worker connection that sent READY.
    func worker(_ name: String, service: String = "echo", credit: UInt32 = 1, weight: Int = 1, services: String? = nil) -> PeerConnection {
        allow(name, role: "worker", weight: weight, services: services)
        let connection = connect(name)
        send(ControlMessage.ready(credit: credit, heartbeatMilliseconds: 1000, service: try! ServiceName(validating: service)).encoded(), from: connection)
        return connection
    }

    func send(_ bytes: [UInt8], from connection: PeerConnection) {
        let body = TestBody(bytes)
        body.bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) {
                let message = try Message.parse(raw, limits: ProtocolLimits(maxFragment: core.rules.maxFragment))
                core.receive(message, body: body, from: connection, now: clock)
            } catch {
                core.receiveMalformed(error, from: connection, now: clock)
            }
        }
    }

    func submit(_ connection: PeerConnection, job: JobID, index: UInt32 = 0, count: UInt32 = 1, service: String = "echo", length: Int = 16) {
        let body = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: length)
        let header = FragmentHeader(jobID: job, index: index, count: count, offset: UInt64(index) * UInt64(length),
                                    totalLength: UInt64(count) * UInt64(length), length: UInt32(length), digest: SHA256.hash(body))
        send(Fragment.encode(command: .submit, tag: 0, service: try! ServiceName(validating: service), header: header, body: body), from: connection)
    }

    func cancel(_ connection: PeerConnection, job: JobID) {
        send(ControlMessage.cancel(jobID: job).encoded(), from: connection)
    }

    /// Answers a WORK with its own body as the result.
    func done(_ connection: PeerConnection, _ work: Work, length: Int? = nil) {
        let body = [UInt8](repeating: 1, count: length ?? work.length)
        let header = FragmentHeader(jobID: work.job, index: work.index, count: work.count, offset: 0, totalLength: 0,
                                    length: UInt32(body.count), digest: SHA256.hash(body))
        send(Fragment.encode(command: .done, tag: work.tag, service: try! ServiceName(validating: work.service), header: header, body: body), from: connection)
    }

    func reject(_ connection: PeerConnection, _ work: Work, retryable: Bool, code: UInt16 = 500) {
        send(ControlMessage.reject(deliveryID: work.tag, code: FailureCode(rawValue: code), retryable: retryable, reason: "no").encoded(), from: connection)
    }

    func advance(seconds: Double) {
        let steps = Int((seconds * 10).rounded(.up))
        for _ in 0..<max(1, steps) {
            clock += 100_000_000
            core.tick(now: clock)
        }
    }

    struct Work: Hashable {
        let address: [UInt8]
        let tag: UInt64
        let job: JobID
        let index: UInt32
        let count: UInt32
        let length: Int
        let service: String
    }

    /// WORK sent since the last call, in order.
    var works: [Work] = []
    /// Every WORK since the caller last cleared it.
    var fresh: [Work] = []
    var results: [(address: [UInt8], job: JobID, index: UInt32)] = []
    var controls: [(address: [UInt8], message: ControlMessage)] = []

    /// Moves the sink's effects into `works`, `results` and `controls`.
    func collect() {
        for effect in sink.take() {
            switch effect {
            case .work(let address, let tag, let body):
                let work: Work = body.bytes.withUnsafeBytes { raw in
                    guard case .work(let view)? = try? Message.parse(raw, limits: ProtocolLimits(maxFragment: core.rules.maxFragment)) else {
                        fatalError("the core forwarded something that is not a WORK")
                    }
                    return Work(address: address, tag: tag, job: view.header.jobID, index: view.header.index, count: view.header.count,
                                length: Int(view.header.length), service: view.service.description)
                }
                works.append(work)
                fresh.append(work)
            case .result(let address, _, let body):
                body.bytes.withUnsafeBytes { raw in
                    if case .result(let view)? = try? Message.parse(raw, limits: ProtocolLimits(maxFragment: core.rules.maxFragment)) {
                        results.append((address, view.header.jobID, view.header.index))
                    }
                }
            case .control(let address, let message, _):
                if let message { controls.append((address, message)) }
            }
        }
    }

    func takeWorks() -> [Work] { collect(); defer { works.removeAll() }; return works }

    func failures(to connection: PeerConnection) -> [(JobID, UInt32, UInt16)] {
        collect()
        return controls.filter { $0.address == connection.address }.compactMap {
            if case .failed(let job, let index, let code, _) = $0.message { return (job, index, code.rawValue) }
            return nil
        }
    }

    func busies(to connection: PeerConnection) -> Int {
        collect()
        return controls.filter { $0.address == connection.address }.filter {
            if case .busy = $0.message { return true }
            return false
        }.count
    }

    func disconnects(to connection: PeerConnection) -> [String] {
        collect()
        return controls.filter { $0.address == connection.address }.compactMap {
            if case .disconnect(let reason) = $0.message { return reason }
            return nil
        }
    }
}

extension JobID {
    static func n(_ value: UInt64) -> JobID { JobID(high: 1, low: value) }
}

/// Counts log lines (and their bytes) instead of writing them.
final class LineCounter: @unchecked Sendable {
    var count = 0
    var bytes = 0
    var messages: [String] = []
}

struct CountingLogHandler: LogHandler {
    let lines: LineCounter
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.count += 1
        lines.bytes += event.message.description.utf8.count + (event.metadata?.description.utf8.count ?? 0)
        lines.messages.append(event.message.description)
    }
}
