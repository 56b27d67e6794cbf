import PropertyBased
import SMQProtocol

// Generators shared by the property tests. They draw from the property checker's seeded generator,
// so a failure is reproducible with the `.fixedSeed(...)` the checker prints.

let serviceAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-".utf8)

extension RandomNumberGenerator {
    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) }
    }

    mutating func bytes(in counts: ClosedRange<Int>) -> [UInt8] {
        bytes(Int.random(in: counts, using: &self))
    }

    mutating func jobID() -> JobID {
        JobID(high: next(), low: next())
    }

    /// Mostly short names, sometimes the longest allowed.
    mutating func service() -> ServiceName {
        let length = Bool.random(using: &self) ? Int.random(in: 1...24, using: &self) : Int.random(in: 240...255, using: &self)
        let bytes = (0..<length).map { _ in serviceAlphabet.randomElement(using: &self)! }
        return try! ServiceName(validating: String(decoding: bytes, as: UTF8.self))
    }

    /// Reasons with multi-byte characters; a third of them longer than 1 KiB, so truncation on a
    /// UTF-8 boundary is exercised.
    mutating func reason() -> String {
        let alphabet: [Character] = ["a", "b", " ", "é", "€", "😀", "\n"]
        let length = Int.random(in: 0...2, using: &self) == 0 ? Int.random(in: 300...700, using: &self) : Int.random(in: 0...40, using: &self)
        return String((0..<length).map { _ in alphabet.randomElement(using: &self)! })
    }

    mutating func code() -> FailureCode {
        Bool.random(using: &self)
            ? [FailureCode.malformed, .forbidden, .noWorker, .cancelled, .tooLarge, .internalError, .draining, .retriesExhausted, .workerFailure].randomElement(using: &self)!
            : FailureCode(rawValue: UInt16.random(in: 0...UInt16.max, using: &self))
    }
}

/// A fragment message's fields, generated together so that the header passes every check.
struct FragmentCase: Sendable, CustomStringConvertible {
    var command: Command
    var tag: UInt64
    var service: ServiceName
    var header: FragmentHeader
    var body: [UInt8]

    var bytes: [UInt8] { Fragment.encode(command: command, tag: tag, service: service, header: header, body: body) }
    var description: String {
        "\(command) tag \(tag) service \(service) index \(header.index)/\(header.count) body \(body.count)"
    }
}

enum Gens {
    static let fragment = Generator<FragmentCase, Shrink.None<FragmentCase>> { rng in
        let command = [Command.submit, .work, .done, .result].randomElement(using: &rng)!
        let body = rng.bytes(in: 0...1500)
        let count = Bool.random(using: &rng) ? UInt32.random(in: 1...8, using: &rng) : UInt32.random(in: 1...UInt32.max, using: &rng)
        let index = UInt32.random(in: 0..<count, using: &rng)
        // Requests are laid out as a fragmenter would: fragments of `size` bytes (at most
        // max-fragment), so fragment 0 is at 0, the last ends at total-length, and the total fits
        // in count × max-fragment (C33).
        let size = UInt64.random(in: UInt64(max(body.count, 1))...UInt64(ProtocolLimits.defaultMaxFragment), using: &rng)
        let offset = command.isRequest ? UInt64(index) * size : 0
        let isLast = index == count - 1
        let rest = isLast ? 0 : UInt64.random(in: 0...(UInt64(count - index - 1) * size), using: &rng)
        let total = command.isRequest ? offset + UInt64(body.count) + rest : 0
        let header = FragmentHeader(
            jobID: rng.jobID(), index: index, count: count, offset: offset, totalLength: total,
            length: UInt32(body.count), digest: SHA256.hash(body))
        return FragmentCase(command: command, tag: rng.next(), service: rng.service(), header: header, body: body)
    }

    static let control = Generator<ControlMessage, Shrink.None<ControlMessage>> { rng in
        switch Int.random(in: 0...10, using: &rng) {
        case 10: return .deadline(deliveryID: rng.next(), timeLeftMilliseconds: rng.next())
        case 0: return .cancel(jobID: rng.jobID())
        case 1: return .ping
        case 2: return .pong
        case 3: return .failed(jobID: rng.jobID(), index: rng.next(), code: rng.code(), reason: rng.reason())
        case 4: return .busy(jobID: rng.jobID(), index: rng.next(), retryAfterMilliseconds: rng.next())
        case 5: return .ready(credit: rng.next(), heartbeatMilliseconds: rng.next(), service: rng.service())
        case 6: return .reject(deliveryID: rng.next(), code: rng.code(), retryable: Bool.random(using: &rng), reason: rng.reason())
        case 7: return .heartbeat
        case 8: return .disconnect(reason: rng.reason())
        default: return .credit(rng.next())
        }
    }

    /// Any valid message's bytes: a fragment or a control message.
    static let anyMessage = Generator<[UInt8], Shrink.None<[UInt8]>> { rng in
        if Bool.random(using: &rng) {
            return fragment.run(using: &rng).bytes
        }
        return control.run(using: &rng).encoded()
    }
}

/// A small seeded generator for tests that draw many values from one property-check input.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
