import PropertyBased
import SMQProtocol
import Testing

/// A job's results as a worker would send them: bodies of varying length with their headers.
struct ResultSet {
    let jobID = JobID.random()
    let bodies: [[UInt8]]
    var headers: [FragmentHeader]

    init(count: Int, seed: UInt64 = 1) {
        bodies = (0..<count).map { payload(($0 * 37) % 300, seed: seed &+ UInt64($0)) }
        let jobID = self.jobID
        headers = bodies.enumerated().map { i, body in
            FragmentHeader(
                jobID: jobID, index: UInt32(i), count: UInt32(count), length: UInt32(body.count), digest: SHA256.hash(body))
        }
    }

    var jobDigest: Digest { SHA256.hash(headers.flatMap(\.digest.bytes)) }
}

/// Feeds results the way a client does and records what comes out.
struct Sink {
    var gatherer: Gatherer
    var delivered: [(UInt32, [UInt8])] = []

    mutating func feed(_ results: ResultSet, _ index: Int) throws -> Gatherer.Outcome {
        let body = results.bodies[index]
        let outcome = try body.withUnsafeBytes { try gatherer.accept(header: results.headers[index], body: $0) }
        if outcome == .deliverNow {
            delivered.append((gatherer.nextIndex - 1, body))
        }
        while gatherer.deliverNextHeld({ index, body in delivered.append((index, Array(body))) }) {}
        return outcome
    }
}

@Suite("Gatherer")
struct GathererTests {
    @Test func inOrderResultsPassStraightThrough() throws {
        let results = ResultSet(count: 10)
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 10, window: 4))
        for i in 0..<10 {
            #expect(try sink.feed(results, i) == .deliverNow)
            #expect(sink.gatherer.heldCount == 0)
        }
        #expect(sink.delivered.map(\.0) == Array(0..<10))
        #expect(sink.delivered.map(\.1) == results.bodies)
        #expect(sink.gatherer.isComplete)
        #expect(try sink.gatherer.finish() == results.jobDigest)
        #expect(sink.gatherer.jobDigest == results.jobDigest)
    }

    @Test func reversedWithinTheWindow() throws {
        let results = ResultSet(count: 8)
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 8, window: 8))
        for i in (1..<8).reversed() {
            #expect(try sink.feed(results, i) == .held)
            #expect(sink.delivered.isEmpty)
        }
        #expect(sink.gatherer.heldCount == 7)
        #expect(try sink.feed(results, 0) == .deliverNow)
        #expect(sink.delivered.map(\.0) == Array(0..<8))
        #expect(sink.delivered.map(\.1) == results.bodies)
        #expect(sink.gatherer.heldCount == 0)
        #expect(try sink.gatherer.finish() == results.jobDigest)
    }

    @Test func aHeldBodyIsCopiedOnce() throws {
        let results = ResultSet(count: 2)
        var gatherer = Gatherer(jobID: results.jobID, count: 2, window: 2)
        // The receive buffer is reused for the next message as soon as accept returns.
        var receiveBuffer = results.bodies[1]
        let outcome = try receiveBuffer.withUnsafeBytes { try gatherer.accept(header: results.headers[1], body: $0) }
        #expect(outcome == .held)
        for i in receiveBuffer.indices { receiveBuffer[i] = 0xFF }
        _ = try results.bodies[0].withUnsafeBytes { try gatherer.accept(header: results.headers[0], body: $0) }
        var held: [(UInt32, [UInt8])] = []
        let handedOver = gatherer.deliverNextHeld { index, body in held.append((index, Array(body))) }
        #expect(handedOver)
        #expect(held.map(\.0) == [1])
        #expect(held.map(\.1) == [results.bodies[1]])
        let more = gatherer.deliverNextHeld { _, _ in Issue.record("nothing should be left") }
        #expect(!more)
    }

    @Test func duplicatesAreDroppedAndCounted() throws {
        let results = ResultSet(count: 5)
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 5, window: 3))
        #expect(try sink.feed(results, 0) == .deliverNow)
        #expect(try sink.feed(results, 0) == .duplicate)  // already delivered
        #expect(try sink.feed(results, 2) == .held)
        #expect(try sink.feed(results, 2) == .duplicate)  // already held
        #expect(sink.gatherer.duplicates == 2)
        for i in [1, 3, 4] { _ = try sink.feed(results, i) }
        #expect(sink.delivered.map(\.0) == Array(0..<5))
        #expect(try sink.gatherer.finish() == results.jobDigest)
    }

    @Test func aResultBeyondTheWindowIsAnError() throws {
        let results = ResultSet(count: 10)
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 10, window: 3))
        #expect(try sink.feed(results, 2) == .held)  // nextIndex 0, window 3: 0, 1, 2 allowed
        #expect { _ = try sink.feed(results, 3) } throws: { error in
            let error = error as? PipelineError
            return error?.code == .windowExceeded && error?.index == 3 && error?.expected == 0
        }
        _ = try sink.feed(results, 0)
        _ = try sink.feed(results, 1)  // nextIndex is now 3: 3, 4, 5 allowed
        #expect(try sink.feed(results, 5) == .held)
        #expect(throws: PipelineError.self) { _ = try sink.feed(results, 6) }
    }

    @Test func aDigestMismatchIsAnError() throws {
        var results = ResultSet(count: 3)
        results.headers[1].digest = SHA256.hash([0xBA, 0xD0])
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 3, window: 3))
        #expect { _ = try sink.feed(results, 1) } throws: { error in
            let error = error as? PipelineError
            return error?.code == .digestMismatch && error?.index == 1
        }
        // A flipped body byte is caught the same way.
        var body = results.bodies[2]
        body[0] ^= 1
        var gatherer = Gatherer(jobID: results.jobID, count: 3, window: 3)
        _ = body.withUnsafeBytes { raw in
            #expect { _ = try gatherer.accept(header: results.headers[2], body: raw) } throws: { error in
                (error as? PipelineError)?.code == .digestMismatch
            }
        }
    }

    @Test func finishingEarlyNamesTheGap() throws {
        let results = ResultSet(count: 6)
        var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: 6, window: 6))
        for i in [0, 1, 3, 4, 5] { _ = try sink.feed(results, i) }
        #expect(sink.delivered.map(\.0) == [0, 1])
        #expect { try sink.gatherer.finish() } throws: { error in
            let error = error as? PipelineError
            return error?.code == .incomplete && error?.index == 2 && error?.actual == 5 && error?.expected == 6
        }
        #expect(sink.gatherer.jobDigest == nil)
        let empty = Gatherer(jobID: results.jobID, count: 1, window: 1)
        #expect(throws: PipelineError.self) { try empty.finish() }
    }

    @Test func resultsThatDoNotBelongAreErrors() throws {
        let results = ResultSet(count: 4)
        var gatherer = Gatherer(jobID: results.jobID, count: 4, window: 4)
        let body = results.bodies[1]
        func expectCode(_ header: FragmentHeader, _ code: PipelineError.Code, body: [UInt8]) {
            _ = body.withUnsafeBytes { raw in
                #expect { _ = try gatherer.accept(header: header, body: raw) } throws: { error in
                    (error as? PipelineError)?.code == code
                }
            }
        }
        var other = results.headers[1]
        other.jobID = JobID.random()
        expectCode(other, .jobMismatch, body: body)
        var count = results.headers[1]
        count.count = 5
        expectCode(count, .countMismatch, body: body)
        var index = results.headers[1]
        index.index = 4
        expectCode(index, .indexOutOfRange, body: body)
        expectCode(results.headers[1], .lengthMismatch, body: body + [0])
        #expect(gatherer.nextIndex == 0 && gatherer.heldCount == 0)
    }

    @Test func randomArrivalOrderWithinTheWindow() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...60), Gen.int(in: 1...10), Gen<UInt64>.value()) {
            count, window, seed in
            let results = ResultSet(count: count, seed: seed)
            var sink = Sink(gatherer: Gatherer(jobID: results.jobID, count: UInt32(count), window: window))
            var rng = SplitMix64(seed: seed)
            // A client with `window` outstanding fragments; the network returns them in any order,
            // sometimes twice.
            var outstanding: [Int] = []
            var sent = 0
            while sink.gatherer.nextIndex < UInt32(count) {
                while sent < count && sent < Int(sink.gatherer.nextIndex) + window {
                    outstanding.append(sent)
                    sent += 1
                }
                let pick = Int.random(in: 0..<outstanding.count, using: &rng)
                let index = outstanding[pick]
                if Int.random(in: 0..<5, using: &rng) != 0 { outstanding.remove(at: pick) }
                _ = try sink.feed(results, index)
                #expect(sink.gatherer.heldCount < window)
            }
            #expect(sink.delivered.map(\.0) == (0..<count).map(UInt32.init))
            #expect(sink.delivered.map(\.1) == results.bodies)
            #expect(try sink.gatherer.finish() == results.jobDigest)
        }
    }
}
