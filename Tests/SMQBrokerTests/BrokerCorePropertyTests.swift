import DequeModule
import PropertyBased
@testable import SMQBroker
import SMQKeys
import SMQProtocol
import Testing

/// A seeded generator, so a failing sequence is reproduced from the seed the checker prints.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct BrokerCorePropertyTests {
    /// Random sequences of submits, results, rejects, cancels, deaths, revocations, full pipes and
    /// time, checked after every event: each fragment is queued, in flight or ended; no worker
    /// holds more than its cap; what is held never exceeds the limits and is exactly what is
    /// counted; nothing of a cancelled or revoked job is dispatched.
    @Test func invariantsHoldOverRandomEvents() async {
        await propertyCheck(count: 60, input: Gen<UInt64>.value()) { seed in
            Self.run(seed: seed)
        }
    }

    static func run(seed: UInt64) {
        do {
            var rng = SplitMix64(seed: seed)
            var rules = BrokerRules.small
            rules.byteBudget = 32 * 1024
            rules.maxFragments = 24
            rules.maxDeliveries = 3
            rules.workLease = 5_000_000_000
            rules.slowClientTimeout = 3_000_000_000
            // Ended ids outlive the run, so a cancelled id is never legitimately reopened.
            rules.endedJobMemory = 86_400_000_000_000
            let h = CoreHarness(rules: rules)
            var clientNames = (0..<3).map { "c\($0)" }
            var clients = clientNames.map { h.client($0) }
            var workers = (0..<3).map { h.worker("w\($0)", service: $0 == 2 ? "other" : "echo", credit: UInt32($0 + 1), weight: $0 + 1) }
            /// (client key serial, job) that must never be dispatched again.
            var forbidden: Set<JobKey> = []
            var nextJob: UInt64 = 1
            for step in 0..<300 {
                let op = Int.random(in: 0..<15, using: &rng)
                switch op {
                case 0, 1, 2, 3:
                    let client = clients.randomElement(using: &rng)!
                    guard !client.gone else { break }
                    let count = UInt32.random(in: 1...4, using: &rng)
                    let number = Bool.random(using: &rng) ? nextJob : UInt64.random(in: 1...nextJob, using: &rng)
                    if number == nextJob { nextJob += 1 }
                    // Ids unique per client key, so a WORK's job id names its client.
                    let job = JobID(high: UInt64(client.key.serial), low: number)
                    h.submit(client, job: job, index: UInt32.random(in: 0..<count, using: &rng), count: count,
                             service: Int.random(in: 0..<4, using: &rng) == 0 ? "other" : "echo", length: Int.random(in: 0...4096, using: &rng))
                case 4, 5, 6:
                    h.collect()
                    guard !h.works.isEmpty else { break }
                    let work = h.works.remove(at: Int.random(in: 0..<h.works.count, using: &rng))
                    guard let worker = workers.first(where: { $0.address == work.address }), !worker.gone else { break }
                    if Int.random(in: 0..<5, using: &rng) == 0 {
                        h.reject(worker, work, retryable: Bool.random(using: &rng))
                    } else {
                        h.done(worker, work)
                    }
                case 7:
                    let client = clients.randomElement(using: &rng)!
                    let job = JobID(high: UInt64(client.key.serial), low: UInt64.random(in: 1...nextJob, using: &rng))
                    let key = JobKey(client: client.key.serial, jobID: job)
                    if !client.gone, h.core.jobs[key] != nil { forbidden.insert(key) }
                    h.cancel(client, job: job)
                case 8:
                    let index = Int.random(in: 0..<workers.count, using: &rng)
                    h.core.connectionGone(workers[index], now: h.clock)
                    workers[index] = h.worker("w\(index)", service: index == 2 ? "other" : "echo", credit: UInt32(index + 1), weight: index + 1)
                case 9:
                    let client = clients.randomElement(using: &rng)!
                    if h.sink.full.contains(client.address) { h.sink.full.remove(client.address) } else { h.sink.full.insert(client.address) }
                case 10:
                    let worker = workers.randomElement(using: &rng)!
                    if h.sink.full.contains(worker.address) { h.sink.full.remove(worker.address) } else { h.sink.full.insert(worker.address) }
                case 11:
                    // Revoke a client: its jobs fail and must never be dispatched again.
                    let index = Int.random(in: 0..<clients.count, using: &rng)
                    let client = clients[index]
                    for key in h.core.jobs.keys where key.client == client.key.serial { forbidden.insert(key) }
                    h.revoke(clientNames[index])
                    clientNames[index] = "c\(index)x\(step)"
                    clients[index] = h.client(clientNames[index])
                case 12:
                    // A worker's pipe disappears: the next send to it finds it gone.
                    let index = Int.random(in: 0..<workers.count, using: &rng)
                    h.sink.gone.insert(workers[index].address)
                default:
                    for worker in workers where !worker.gone { h.send(ControlMessage.heartbeat.encoded(), from: worker) }
                    for client in clients where !client.gone { h.send(ControlMessage.ping.encoded(), from: client) }
                    h.advance(seconds: Double.random(in: 0.1...2, using: &rng))
                }
                h.collect()
                defer { h.fresh.removeAll() }
                for work in h.fresh {
                    #expect(!forbidden.contains { $0.jobID == work.job }, "a cancelled or revoked job was dispatched (seed \(seed), step \(step))")
                }
                checkInvariants(h, forbidden: forbidden, seed: seed, step: step)
                // Only WORK that reached a live worker can be answered.
                h.works.removeAll { work in !workers.contains { $0.address == work.address && !$0.gone } }
            }
        }
    }

    private static func checkInvariants(_ h: CoreHarness, forbidden: Set<JobKey>, seed: UInt64, step: Int) {
        let core = h.core!
        var bytes = 0
        var fragments = 0
        for (key, job) in core.jobs {
            #expect(!job.ended && job.key == key)
            for fragment in job.live.values {
                let inFlight = fragment.deliveryID != 0 && core.deliveries[fragment.deliveryID] === fragment
                #expect(fragment.queued != inFlight, "fragment \(fragment.index) is neither or both queued and in flight (seed \(seed), step \(step))")
                #expect(fragment.body != nil)
                bytes += fragment.cost
                fragments += 1
            }
        }
        for connection in core.connections.values where !connection.gone {
            for item in connection.outbox {
                if case .result(_, _, let cost) = item {
                    bytes += cost
                    fragments += 1
                }
            }
        }
        #expect(bytes == core.bytesHeld, "held bytes out of step (seed \(seed), step \(step))")
        #expect(fragments == core.fragmentsHeld, "held fragments out of step (seed \(seed), step \(step))")
        #expect(core.bytesHeld <= core.rules.byteBudget + core.rules.maxFragmentCost * core.fragmentsHeld)
        #expect(core.fragmentsHeld <= core.rules.maxFragments)
        for fragment in core.deliveries.values {
            #expect(fragment.worker != nil && !fragment.job.ended)
        }
        // Dispatch orders clients by their fragments in flight (C37): the count must be exact.
        var inFlightByClient: [String: [Int: Int]] = [:]
        for fragment in core.deliveries.values {
            inFlightByClient[fragment.job.service.name, default: [:]][fragment.job.key.client, default: 0] += 1
        }
        for service in core.services.values {
            #expect(service.clientsInFlight == inFlightByClient[service.name, default: [:]],
                    "clients' in-flight counts out of step (seed \(seed), step \(step))")
        }
        var queued: [String: Int] = [:]
        for job in core.jobs.values {
            for fragment in job.live.values where fragment.queued { queued[job.service.name, default: 0] += 1 }
        }
        for service in core.services.values {
            #expect(service.queuedCount == queued[service.name, default: 0], "queued count out of step (seed \(seed), step \(step))")
            #expect(service.recordCount <= 2 * max(64, service.queuedCount) + 64 * 3, "dead records pile up (seed \(seed), step \(step))")
            for slot in service.workers.values {
                #expect(slot.inFlight <= slot.cap, "a worker key holds more than its cap (seed \(seed), step \(step))")
                #expect(slot.inFlight == slot.connections.reduce(0) { $0 + ($1.worker?.inFlight ?? 0) })
                for connection in slot.connections {
                    let state = connection.worker!
                    #expect(state.inFlight <= state.askedCredit)
                    #expect(state.inFlight == state.deliveries.count)
                    #expect(state.pending.count <= state.inFlight)
                    #expect(state.suspects <= 1)
                }
            }
        }
    }
}
