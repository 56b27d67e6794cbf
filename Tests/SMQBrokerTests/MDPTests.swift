import Logging
@testable import SMQBroker
import SMQKeys
import SMQProtocol
import Testing

// MARK: the codec

/// Parses frames given as arrays (the adapter gives libzmq buffers).
private func parse(_ frames: [[UInt8]]) throws(MDP.ParseError) -> MDP.Message {
    var buffers: [UnsafeMutableRawBufferPointer] = []
    defer { for buffer in buffers { buffer.deallocate() } }
    for frame in frames {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 1)
        buffer.copyBytes(from: frame)
        buffers.append(buffer)
    }
    return try MDP.parse(frameCount: frames.count) { UnsafeRawBufferPointer(buffers[$0]) }
}

private let clientHeader = MDP.clientHeader
private let workerHeader = MDP.workerHeader
private let echo = Array("echo".utf8)

@Suite("7/MDP codec")
struct MDPCodecTests {
    @Test("RFC 7 messages parse, bodies stay in their frames")
    func valid() throws {
        #expect(try parse([[], clientHeader, echo, [1, 2], [3]]) == .request(service: "echo", bodyStart: 3, bodyFrames: 2, mmiArgument: nil))
        #expect(try parse([[], clientHeader, Array("mmi.service".utf8), echo])
            == .request(service: "mmi.service", bodyStart: 3, bodyFrames: 1, mmiArgument: "echo"))
        #expect(try parse([[], workerHeader, [1], echo]) == .ready(service: "echo"))
        #expect(try parse([[], workerHeader, [3], MDP.bigEndian(42), [], [9]]) == .reply(delivery: 42, bodyStart: 5, bodyFrames: 1))
        #expect(try parse([[], workerHeader, [4]]) == .heartbeat)
        #expect(try parse([[], workerHeader, [5]]) == .disconnect)
    }

    /// The ten kinds of issue 14 (zguide's broker dies on seven of them), and more.
    @Test("malformed MDP is refused with a reason", arguments: [
        [clientHeader, echo, [1]],                               // no delimiter
        [[]],                                              // an empty frame alone
        [[], Array("MDPX99".utf8), echo, [1]],             // unknown header
        [[], workerHeader],                                      // missing command
        [[], clientHeader],                                      // missing service
        [[], workerHeader, [1]],                                 // READY without service
        [[], clientHeader, echo],                                // request without body
        [[7, 7], [1, 2, 3], [0xFF]],                       // random frames
        [[], workerHeader, [9]],                                 // unknown command
        [[], workerHeader, [3], [1, 2], [], [1]],                // reply to an address the broker never gave
        [[], clientHeader, []],                                  // empty service
        [[], clientHeader, Array("bad name".utf8), [1]],         // a service outside [A-Za-z0-9._-]
        [[], workerHeader, [2], MDP.bigEndian(1), [], [1]],      // REQUEST sent to the broker
        [[], workerHeader, [1, 1], echo],                        // a command frame of two bytes
        [[], workerHeader, [3], MDP.bigEndian(1), [1], [1]],     // no empty frame after the address
        [[], workerHeader, [4], [1]],                            // HEARTBEAT with a body
    ] as [[[UInt8]]])
    func malformed(frames: [[UInt8]]) {
        #expect(throws: MDP.ParseError.self) { try parse(frames) }
    }

    @Test("a body of more frames than the bound is refused")
    func tooManyFrames() {
        let frames = [[], clientHeader, echo] + Array(repeating: [UInt8(1)], count: MDP.maxBodyFrames + 1)
        #expect(throws: MDP.ParseError.self) { try parse(frames) }
        #expect((try? parse(Array(frames.dropLast()))) != nil)
    }
}

// MARK: the core's MDP rules

/// Body frames as the harness hands them to the core.
final class MDPTestBody {
    let frames: [[UInt8]]
    init(_ frames: [[UInt8]]) { self.frames = frames }
}

/// Records MDP effects as well as SMQ/1 ones.
final class MDPSink: BrokerSink {
    enum Effect: Equatable {
        case request(address: [UInt8], delivery: UInt64, frames: [[UInt8]])
        case reply(address: [UInt8], service: String, frames: [[UInt8]])
        case mdp(address: [UInt8], frames: [[UInt8]])
        case work(address: [UInt8], tag: UInt64, bytes: [UInt8])
        case result(address: [UInt8], bytes: [UInt8])
        case control(address: [UInt8], bytes: [UInt8])
    }

    var effects: [Effect] = []

    func bodyFrames(_ body: AnyObject) -> [[UInt8]] {
        if let mdp = body as? MDPTestBody { return mdp.frames }
        let bytes = (body as! TestBody).bytes
        return bytes.withUnsafeBytes { raw in
            guard let message = try? Message.parse(raw, limits: .default), case .submit(let view) = message else {
                guard let message = try? Message.parse(raw, limits: .default), case .done(let view) = message else { return [] }
                return [Array(view.body)]
            }
            return [Array(view.body)]
        }
    }

    func forward(_ body: AnyObject, as command: Command, tag: UInt64, keep: Bool, to address: [UInt8]) -> SendOutcome {
        let body = body as! TestBody
        body.bytes.withUnsafeMutableBytes { Fragment.rewriteCommandAndTag(in: $0, command: command, tag: tag) }
        effects.append(command == .work ? .work(address: address, tag: tag, bytes: body.bytes) : .result(address: address, bytes: body.bytes))
        return .sent
    }

    func send(_ bytes: [UInt8], to address: [UInt8]) -> SendOutcome {
        effects.append(.control(address: address, bytes: bytes))
        return .sent
    }

    func drained() {}

    func sendMDPRequest(_ body: AnyObject, delivery: UInt64, to address: [UInt8]) -> SendOutcome {
        effects.append(.request(address: address, delivery: delivery, frames: bodyFrames(body)))
        return .sent
    }

    func sendMDPReply(_ body: AnyObject, service: String, to address: [UInt8]) -> SendOutcome {
        effects.append(.reply(address: address, service: service, frames: bodyFrames(body)))
        return .sent
    }

    func sendMDP(_ frames: [[UInt8]], to address: [UInt8]) -> SendOutcome {
        effects.append(.mdp(address: address, frames: frames))
        return .sent
    }

    func smqFragment(fromMDP body: AnyObject, command: Command, service: String, jobID: JobID, index: UInt32, count: UInt32) -> AnyObject? {
        guard let mdp = body as? MDPTestBody, mdp.frames.count == 1 else { return nil }
        let bytes = mdp.frames[0]
        let header = FragmentHeader(jobID: jobID, index: index, count: count, offset: 0, totalLength: command == .submit ? UInt64(bytes.count) : 0,
                                    length: UInt32(bytes.count), digest: SHA256.hash(bytes))
        return TestBody(Fragment.encode(command: command, tag: 0, service: try! ServiceName(validating: service), header: header, body: bytes))
    }

    func take() -> [Effect] {
        defer { effects.removeAll() }
        return effects
    }
}

/// A core with a manual clock and the MDP sink.
final class MDPHarness {
    let lines = LineCounter()
    var clock: UInt64 = 1_000_000_000
    let sink = MDPSink()
    var entries: [PublicKey: AllowlistEntry] = [:]
    private(set) var core: BrokerCore!
    private var serial: UInt8 = 1
    private var nextAddress: UInt8 = 1

    init(rules: BrokerRules = .small) {
        let lines = self.lines
        var logger = Logger(label: "test.mdp") { _ in CountingLogHandler(lines: lines) }
        logger.logLevel = .trace
        core = BrokerCore(rules: rules, sink: sink, logger: logger) { [unowned self] in self.entries[$0] }
    }

    func connect(role: String, services: String? = nil, mdp: Bool = true) -> PeerConnection {
        let key = try! PublicKey(bytes: [serial] + [UInt8](repeating: 9, count: 31))
        serial &+= 1
        var pairs = [("role", role), ("name", "peer\(serial)")]
        if let services { pairs.append(("services", services)) }
        entries[key] = try! AllowlistEntry(certificate: Certificate(publicKey: key, metadata: CertificateMetadata(pairs)))
        let address: [UInt8] = [1, nextAddress]
        nextAddress &+= 1
        return core.admit(id: RoutingID(address), address: address, userID: key.z85, now: clock, mdp: mdp)!
    }

    func send(_ frames: [[UInt8]], from connection: PeerConnection) {
        do throws(MDP.ParseError) {
            let message = try parse(frames)
            switch message {
            case .request(_, let start, _, _), .reply(_, let start, _):
                let body = Array(frames[start...])
                core.receiveMDP(message, body: MDPTestBody(body), bodyBytes: body.reduce(0) { $0 + $1.count }, from: connection, now: clock)
            default:
                core.receiveMDP(message, body: MDPTestBody([]), bodyBytes: 0, from: connection, now: clock)
            }
        } catch {
            core.receiveMDPMalformed(error, from: connection, now: clock)
        }
    }

    func worker(service: String = "echo") -> PeerConnection {
        let connection = connect(role: "worker")
        send([[], workerHeader, [1], Array(service.utf8)], from: connection)
        return connection
    }

    func request(_ from: PeerConnection, service: String = "echo", _ body: [[UInt8]] = [[1, 2, 3]]) {
        send([[], clientHeader, Array(service.utf8)] + body, from: from)
    }

    func reply(_ from: PeerConnection, delivery: UInt64, _ body: [[UInt8]]) {
        send([[], workerHeader, [3], MDP.bigEndian(delivery), []] + body, from: from)
    }

    func advance(seconds: Double) {
        for _ in 0..<max(1, Int((seconds * 10).rounded(.up))) {
            clock += 100_000_000
            core.tick(now: clock)
        }
    }

    var requests: [(address: [UInt8], delivery: UInt64, frames: [[UInt8]])] {
        sink.effects.compactMap { if case .request(let a, let d, let f) = $0 { return (a, d, f) }; return nil }
    }

    func replies(to connection: PeerConnection) -> [[[UInt8]]] {
        sink.effects.compactMap { if case .reply(let a, _, let f) = $0, a == connection.address { return f }; return nil }
    }

    func mdpFrames(to connection: PeerConnection) -> [[[UInt8]]] {
        sink.effects.compactMap { if case .mdp(let a, let f) = $0, a == connection.address { return f }; return nil }
    }
}

@Suite("7/MDP in the broker core")
struct MDPCoreTests {
    @Test("an MDP request goes to an MDP worker as REQUEST (delivery id as address) and its reply back, several frames intact")
    func roundTrip() {
        let h = MDPHarness()
        let w = h.worker()
        let c = h.connect(role: "client")
        h.request(c, [[1], [], [2, 3]])
        let request = try! #require(h.requests.first)
        #expect(request.address == w.address && request.frames == [[1], [], [2, 3]])
        h.reply(w, delivery: request.delivery, [[9], [8]])
        #expect(h.replies(to: c) == [[[9], [8]]])
        #expect(h.core.snapshot.openJobs == 0 && h.core.snapshot.bytesHeld == 0)
    }

    @Test("mmi.service answers 200 or 404, other mmi.* 501")
    func mmi() {
        let h = MDPHarness()
        let c = h.connect(role: "client")
        h.request(c, service: "mmi.service", [Array("echo".utf8)])
        _ = h.worker()
        h.request(c, service: "mmi.service", [Array("echo".utf8)])
        h.request(c, service: "mmi.other", [Array("echo".utf8)])
        let answers = h.mdpFrames(to: c).map { $0.last! }
        #expect(answers == [Array("404".utf8), Array("200".utf8), Array("501".utf8)])
    }

    @Test("a one-frame MDP request is served by an SMQ/1 worker as a WORK with its digest; its DONE returns as an MDP reply")
    func mdpClientSMQWorker() throws {
        let h = MDPHarness()
        let w = h.connect(role: "worker", mdp: false)
        let ready = ControlMessage.ready(credit: 4, heartbeatMilliseconds: 1000, service: "echo").encoded()
        ready.withUnsafeBytes { raw in h.core.receive(try! Message.parse(raw, limits: .default), body: TestBody(ready), from: w, now: h.clock) }
        let c = h.connect(role: "client")
        h.request(c, [Array("hello".utf8)])
        guard case .work(let address, let tag, let bytes)? = h.sink.effects.last else { Issue.record("no WORK"); return }
        #expect(address == w.address)
        try bytes.withUnsafeBytes { raw in
            guard case .work(let view) = try Message.parse(raw, limits: .default) else { Issue.record("not a WORK"); return }
            #expect(Array(view.body) == Array("hello".utf8))
            #expect(view.header.digest == SHA256.hash(Array("hello".utf8)) && view.header.count == 1)
            let done = Fragment.encode(command: .done, tag: tag, service: "echo",
                                       header: FragmentHeader(jobID: view.header.jobID, index: 0, count: 1, offset: 0, totalLength: 0,
                                                              length: 2, digest: SHA256.hash([7, 7])), body: [7, 7])
            done.withUnsafeBytes { raw in h.core.receive(try! Message.parse(raw, limits: .default), body: TestBody(done), from: w, now: h.clock) }
        }
        #expect(h.replies(to: c) == [[[7, 7]]])
    }

    @Test("several body frames wait for an MDP worker, and with none serving they get no reply")
    func multiFrameOnlyToMDPWorkers() {
        let h = MDPHarness()
        let c = h.connect(role: "client")
        h.request(c, [[1], [2]])
        #expect(h.core.snapshot.openJobs == 0)
        #expect(h.lines.messages.contains("no reply to an MDP client"))
    }

    @Test("max-jobs counts MDP requests: one more gets no reply (SMQ/1 would get BUSY), and the core says why")
    func maxJobs() {
        var rules = BrokerRules.small
        rules.maxJobsPerClient = 2
        let h = MDPHarness(rules: rules)
        _ = h.worker()
        let c = h.connect(role: "client")
        for _ in 0..<3 { h.request(c) }
        #expect(h.core.snapshot.openJobs == 2)
        #expect(h.core.snapshot.busy == 1)
        #expect(!h.sink.effects.contains { if case .control(let a, _) = $0 { return a == c.address }; return false })
    }

    @Test("a busy MDP worker is not expired on silence; an idle one is, and the work lease still bounds a busy one")
    func busyWorker() {
        var rules = BrokerRules.small
        rules.heartbeatInterval = 1_000_000_000
        rules.workLease = 20_000_000_000
        let h = MDPHarness(rules: rules)
        let busy = h.worker()
        let c = h.connect(role: "client")
        h.request(c)
        let delivery = h.requests[0].delivery
        h.advance(seconds: 10)  // far past 3 × 1 s of silence
        #expect(!busy.gone)
        #expect(!h.mdpFrames(to: busy).isEmpty, "the broker heartbeats MDP workers in MDP")
        h.reply(busy, delivery: delivery, [[1]])
        #expect(h.replies(to: c).count == 1)
        h.advance(seconds: 4)
        #expect(busy.gone, "an idle MDP worker silent for interval × liveness is dead")
        let stuck = h.worker()
        h.request(c)
        h.advance(seconds: 22)
        #expect(stuck.gone, "the work lease bounds a busy worker")
    }

    @Test("a second READY disconnects that worker only, its request requeued uncharged to another; DISCONNECT likewise")
    func secondReadyAndDisconnect() {
        let h = MDPHarness()
        let first = h.worker()
        let c = h.connect(role: "client")
        h.request(c)
        #expect(h.requests.last?.address == first.address)
        let second = h.worker()
        h.send([[], workerHeader, [1], Array("echo".utf8)], from: first)
        #expect(first.gone)
        #expect(h.mdpFrames(to: first).last == MDP.disconnectFrames)
        let retry = try! #require(h.requests.last)
        #expect(retry.address == second.address)
        h.send([[], workerHeader, [5]], from: second)
        #expect(second.gone)
        let third = h.worker()
        #expect(h.requests.last?.address == third.address)
        h.reply(third, delivery: h.requests.last!.delivery, [[4]])
        #expect(h.replies(to: c) == [[[4]]])
    }

    @Test("malformed MDP is dropped and logged (rate-limited); an MDP client gets nothing, an MDP worker holding no work stays")
    func malformedFromPeers() {
        let h = MDPHarness()
        let w = h.worker()
        let c = h.connect(role: "client")
        for _ in 0..<100 {
            h.send([[], clientHeader, echo], from: c)
            h.send([[], workerHeader, [1]], from: w)
        }
        #expect(!w.gone && !c.gone)
        #expect(h.core.snapshot.malformed == 200)
        #expect(h.lines.count < 20, "log lines are rate-limited")
        h.request(c)
        #expect(h.requests.count == 1)
    }

    @Test("roles come from the allowlist: a client key's READY and a worker key's request get DISCONNECT-equivalents")
    func roles() {
        let h = MDPHarness()
        let notWorker = h.connect(role: "client")
        h.send([[], workerHeader, [1], echo], from: notWorker)
        #expect(notWorker.gone)
        let restricted = h.connect(role: "client", services: "other")
        h.request(restricted)
        #expect(h.core.snapshot.forbidden == 1 && h.core.snapshot.openJobs == 0)
    }

    @Test("an MDP client with requests open is never dropped for silence; idle, it is forgotten (C54)")
    func idleClientsForgotten() {
        var rules = BrokerRules.small
        rules.heartbeatInterval = 1_000_000_000
        let h = MDPHarness(rules: rules)
        let w = h.worker()
        let c = h.connect(role: "client")
        h.request(c)
        h.advance(seconds: 5)
        #expect(!c.gone, "waiting for its reply, an MDP client cannot PING")
        h.reply(w, delivery: h.requests[0].delivery, [[1]])
        #expect(h.replies(to: c).count == 1)
        for _ in 0..<4 {
            h.send([[], workerHeader, [4]], from: w)  // the worker heartbeats; the idle client says nothing
            h.advance(seconds: 1)
        }
        #expect(c.gone)
        #expect(h.core.connection(for: c.id) == nil)
        #expect(!w.gone)
    }
}
