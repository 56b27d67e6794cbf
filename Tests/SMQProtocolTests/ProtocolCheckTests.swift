import PropertyBased
import SMQProtocol
import Testing

/// Parses and returns the error, or nil when the message parsed.
func parseError(_ bytes: [UInt8], limits: ProtocolLimits = .default) -> ProtocolError? {
    bytes.withUnsafeBytes { raw -> ProtocolError? in
        do throws(ProtocolError) {
            _ = try Message.parse(raw, limits: limits)
            return nil
        } catch {
            return error
        }
    }
}

/// A valid SUBMIT whose header a test then breaks in one way.
struct SubmitBuilder {
    var command: Command = .submit
    var tag: UInt64 = 0
    var service: ServiceName = "echo"
    var jobID = JobID(high: 0x1111, low: 0x2222)
    var body: [UInt8] = Array(repeating: 0x5A, count: 100)
    lazy var header = FragmentHeader(
        jobID: jobID, index: 1, count: 3, offset: 100, totalLength: 300, length: UInt32(body.count),
        digest: SHA256.hash(body))

    mutating func bytes() -> [UInt8] {
        Fragment.encode(command: command, tag: tag, service: service, header: header, body: body)
    }
}

@Suite("§2.2 fragment header checks: FAILED 400 or 413, with job id and index")
struct FragmentHeaderCheckTests {
    func expectFailure(
        _ builder: inout SubmitBuilder, _ code: ProtocolError.Code, failure: FailureCode = .malformed,
        limits: ProtocolLimits = .default, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let bytes = builder.bytes()
        guard let error = parseError(bytes, limits: limits) else {
            Issue.record("parsed, expected \(code)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.code == code, sourceLocation: sourceLocation)
        #expect(error.failureCode == failure, sourceLocation: sourceLocation)
        #expect(!error.isUnreadable, sourceLocation: sourceLocation)
        #expect(error.jobID == builder.jobID, sourceLocation: sourceLocation)
        #expect(error.index == builder.header.index, sourceLocation: sourceLocation)
        #expect(error.command == builder.command, sourceLocation: sourceLocation)
        #expect(error.tag == builder.tag, sourceLocation: sourceLocation)
    }

    @Test func theBaselineIsValid() {
        var builder = SubmitBuilder()
        #expect(parseError(builder.bytes()) == nil)
    }

    @Test func headerVersion() {
        for version: UInt8 in [0, 2, 255] {
            var builder = SubmitBuilder()
            builder.header.version = version
            expectFailure(&builder, .badHeaderVersion)
        }
    }

    @Test func unknownFlagBits() {
        for bit in 1..<8 {
            var builder = SubmitBuilder()
            builder.header.flags.insert(FragmentFlags(rawValue: 1 << bit))
            expectFailure(&builder, .badFlags)
        }
    }

    @Test func reservedBytes() {
        for reserved: UInt16 in [1, 0x100, 0xFFFF] {
            var builder = SubmitBuilder()
            builder.header.reserved = reserved
            expectFailure(&builder, .reservedNotZero)
        }
    }

    @Test func indexNotBelowCount() {
        var builder = SubmitBuilder()
        builder.header.index = 3
        builder.header.flags = []
        expectFailure(&builder, .indexOutOfRange)
        builder.header.index = 7
        expectFailure(&builder, .indexOutOfRange)
        builder.header.index = 0
        builder.header.count = 0
        expectFailure(&builder, .indexOutOfRange)
    }

    @Test func lastFlagExactlyOnTheLastIndex() {
        var early = SubmitBuilder()
        early.header.flags = .last
        expectFailure(&early, .lastFlagMismatch)

        var missing = SubmitBuilder()
        missing.header.index = 2
        missing.header.offset = 200
        missing.header.flags = []
        expectFailure(&missing, .lastFlagMismatch)

        var single = SubmitBuilder()
        single.header = FragmentHeader(
            jobID: single.jobID, index: 0, count: 1, offset: 0, totalLength: 100, length: 100,
            digest: SHA256.hash(single.body))
        #expect(single.header.isLast)
        #expect(parseError(single.bytes()) == nil)
    }

    @Test func lengthMustBeTheBytesThatFollow() {
        for claimed: UInt32 in [0, 99, 101, 1 << 30] {
            var builder = SubmitBuilder()
            builder.header.length = claimed
            expectFailure(&builder, .lengthMismatch)
        }
    }

    @Test func oversizedBodyIs413() {
        let limits = ProtocolLimits(maxFragment: 64)
        var builder = SubmitBuilder()
        expectFailure(&builder, .fragmentTooLarge, failure: .tooLarge, limits: limits)
        // Exactly max-fragment is allowed.
        var exact = SubmitBuilder()
        exact.body = Array(repeating: 1, count: 64)
        exact.header.length = 64
        exact.header.offset = 64
        exact.header.totalLength = 192
        #expect(parseError(exact.bytes(), limits: limits) == nil)
        // Results are bounded too (§4.1).
        var result = SubmitBuilder()
        result.command = .done
        result.tag = 99
        expectFailure(&result, .fragmentTooLarge, failure: .tooLarge, limits: limits)
    }

    @Test func requestOffsetPlusLengthWithinTotal() {
        var builder = SubmitBuilder()
        builder.header.totalLength = 199
        expectFailure(&builder, .offsetOutOfRange)
        var overflow = SubmitBuilder()
        overflow.header.offset = UInt64.max - 10
        overflow.header.totalLength = UInt64.max
        expectFailure(&overflow, .offsetOutOfRange)
        var work = SubmitBuilder()
        work.command = .work
        work.tag = 5
        work.header.offset = 250
        expectFailure(&work, .offsetOutOfRange)
    }

    @Test("C33: total-length fits in Int and in count × max-fragment; first and last fragments are anchored")
    func requestTotalsAreRangeChecked() {
        // The case that crashed `smq worker`: offset 2^63, total-length 2^64 − 1.
        var absurd = SubmitBuilder()
        absurd.header.offset = 1 << 63
        absurd.header.totalLength = UInt64.max
        expectFailure(&absurd, .totalLengthOutOfRange)
        // Just past Int.max, with a count that could otherwise carry it.
        var pastIntMax = SubmitBuilder()
        pastIntMax.header.count = UInt32.max
        pastIntMax.header.index = 1
        pastIntMax.header.offset = UInt64(Int64.max) - 200
        pastIntMax.header.totalLength = UInt64(Int64.max) + 1
        expectFailure(&pastIntMax, .totalLengthOutOfRange, limits: ProtocolLimits(maxFragment: Int(UInt32.max)))
        // Exactly Int.max is the largest total a request may carry.
        var atIntMax = pastIntMax
        atIntMax.header.totalLength = UInt64(Int64.max)
        #expect(parseError(atIntMax.bytes(), limits: ProtocolLimits(maxFragment: Int(UInt32.max))) == nil)
        // More than the job's fragments could carry: 3 fragments of at most 100 bytes.
        var tooLong = SubmitBuilder()
        tooLong.header.totalLength = 301
        expectFailure(&tooLong, .totalLengthOutOfRange, limits: ProtocolLimits(maxFragment: 100))
        var enough = SubmitBuilder()
        #expect(parseError(enough.bytes(), limits: ProtocolLimits(maxFragment: 100)) == nil)
        // Fragment 0 starts at 0; the last fragment ends at total-length.
        var first = SubmitBuilder()
        first.header = FragmentHeader(jobID: first.jobID, index: 0, count: 3, offset: 1, totalLength: 300,
                                      length: 100, digest: SHA256.hash(first.body))
        expectFailure(&first, .firstFragmentNotAtStart)
        var last = SubmitBuilder()
        last.header = FragmentHeader(jobID: last.jobID, index: 2, count: 3, offset: 150, totalLength: 300,
                                     length: 100, digest: SHA256.hash(last.body))
        expectFailure(&last, .lastFragmentNotAtEnd)
        var single = SubmitBuilder()
        single.header = FragmentHeader(jobID: single.jobID, index: 0, count: 1, offset: 0, totalLength: 101,
                                       length: 100, digest: SHA256.hash(single.body))
        expectFailure(&single, .lastFragmentNotAtEnd)
    }

    @Test("any header that passes the checks converts to Int without trapping")
    func acceptedHeadersAreSafeToConvert() async {
        let boundaries: [UInt64] = [0, 1, 100, UInt64(Int32.max), UInt64(UInt32.max), UInt64(Int64.max) - 1,
                                    UInt64(Int64.max), UInt64(Int64.max) + 1, UInt64.max - 1, UInt64.max]
        let counts: [UInt32] = [1, 2, 3, UInt32.max - 1, UInt32.max]
        await propertyCheck(count: 2000, input: Gen.int(in: 0...Int.max)) { seed in
            var rng = SplitMix64(seed: UInt64(seed))
            let count = counts.randomElement(using: &rng)!
            let index = [0, 1, count - 1, count, UInt32.max].randomElement(using: &rng)!
            var header = FragmentHeader(jobID: .random(), index: min(index, count - 1), count: count,
                                        offset: boundaries.randomElement(using: &rng)!,
                                        totalLength: boundaries.randomElement(using: &rng)!, length: 0, digest: .zero)
            header.index = index
            header.length = [0, 1, 100, UInt32.max].randomElement(using: &rng)!
            let limits = ProtocolLimits(maxFragment: [1, 100, 1 << 20, Int(UInt32.max)].randomElement(using: &rng)!)
            let bodyLength = Int(header.length)
            guard (try? header.validate(bodyLength: bodyLength, isRequest: true, limits: limits)) != nil else { return }
            // What a worker and a gatherer do with an accepted request.
            let offset = Int(exactly: header.offset), total = Int(exactly: header.totalLength)
            #expect(offset != nil && total != nil)
            if let offset, let total {
                #expect(offset + bodyLength <= total)
                #expect(UInt64(total) <= UInt64(header.count) * UInt64(limits.maxFragment))
            }
        }
    }

    @Test func resultsSkipTheOffsetCheck() {
        for command in [Command.done, .result] {
            var builder = SubmitBuilder()
            builder.command = command
            builder.header.offset = 0
            builder.header.totalLength = 0
            #expect(parseError(builder.bytes()) == nil)
            builder.header.offset = 1 << 40
            #expect(parseError(builder.bytes()) == nil)
        }
    }

    @Test func headerCheckDirectly() {
        let header = FragmentHeader(jobID: .random(), index: 0, count: 1, offset: 0, totalLength: 10, length: 10, digest: .zero)
        #expect(throws: Never.self) { try header.validate(bodyLength: 10, isRequest: true, limits: .default) }
        #expect { try header.validate(bodyLength: 11, isRequest: true, limits: .default) } throws: { error in
            (error as? ProtocolError)?.code == .lengthMismatch
        }
        #expect { try header.validate(bodyLength: 10, isRequest: true, limits: ProtocolLimits(maxFragment: 9)) } throws: { error in
            (error as? ProtocolError)?.failureCode == .tooLarge
        }
    }
}

@Suite("§2.3 unreadable messages: dropped and logged")
struct UnreadableMessageTests {
    func expectUnreadable(_ bytes: [UInt8], _ code: ProtocolError.Code, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let error = parseError(bytes) else {
            Issue.record("parsed, expected \(code)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.code == code, sourceLocation: sourceLocation)
        #expect(error.isUnreadable, sourceLocation: sourceLocation)
        #expect(error.failureCode == nil, sourceLocation: sourceLocation)
        #expect(!error.description.isEmpty, sourceLocation: sourceLocation)
    }

    @Test func signature() {
        expectUnreadable(Array("XMQ".utf8) + [1, 3], .badSignature)
        expectUnreadable(Array("smq".utf8) + [1, 3], .badSignature)
        expectUnreadable([0x00, 0x4D, 0x44, 0x50, 0x43, 0x30, 0x31], .badSignature)  // an MDP-ish frame
        expectUnreadable(Array("X".utf8), .badSignature)
    }

    @Test func version() {
        expectUnreadable(Array("SMQ".utf8) + [0, 3], .unsupportedVersion)
        expectUnreadable(Array("SMQ".utf8) + [2, 3], .unsupportedVersion)
    }

    @Test func unknownCommands() {
        let known = Set(Command.allKnown.map(\.rawValue))
        for raw in UInt8.min...UInt8.max where !known.contains(raw) {
            let error = parseError(Array("SMQ".utf8) + [1, raw])
            #expect(error?.code == .unknownCommand)
            #expect(error?.command == Command(rawValue: raw))
            #expect(error?.isUnreadable == true)
        }
    }

    @Test func tooShortForTheEnvelope() {
        expectUnreadable([], .truncated)
        expectUnreadable(Array("SM".utf8), .truncated)
        expectUnreadable(Array("SMQ".utf8) + [1], .truncated)
    }

    @Test(arguments: Command.allKnown)
    func tooShortForEachCommand(command: Command) {
        // Every strict prefix of a minimal valid message that keeps the envelope is unreadable,
        // except that a reason may be cut anywhere and still be a reason.
        let minimal: [UInt8] =
            switch command {
            case .submit, .work, .done, .result:
                Fragment.encode(
                    command: command, tag: 1, service: "s",
                    header: FragmentHeader(jobID: .random(), index: 0, count: 1, length: 0, digest: SHA256.hash([])),
                    body: [UInt8]())
            default:
                sampleControl(command).encoded()
            }
        for length in Message.envelopeSize..<minimal.count {
            let error = parseError(Array(minimal[0..<length]))
            #expect(error?.code == .truncated, "\(command) cut to \(length)")
            #expect(error?.isUnreadable == true)
        }
        #expect(parseError(minimal) == nil)
    }

    @Test(arguments: [Command.cancel, .ping, .pong, .busy, .heartbeat, .credit, .ready])
    func trailingBytesAfterAFixedCommand(command: Command) {
        expectUnreadable(sampleControl(command).encoded() + [0], .trailingBytes)
    }

    @Test func badServiceNames() {
        var builder = SubmitBuilder()
        let valid = builder.bytes()
        // Length byte 0.
        var empty = Array(valid[0..<13]) + [0] + Array(valid[18...])
        expectUnreadable(empty, .badServiceName)
        // A byte outside [A-Za-z0-9._-], for every such byte.
        let allowed = Set(serviceAlphabet)
        for byte in UInt8.min...UInt8.max where !allowed.contains(byte) {
            var bad = valid
            bad[15] = byte
            expectUnreadable(bad, .badServiceName)
        }
        // A length that runs past the end.
        empty = Array(valid[0..<13]) + [200] + Array("echo".utf8)
        expectUnreadable(empty, .truncated)
        // READY checks its service the same way.
        var ready = ControlMessage.ready(credit: 1, heartbeatMilliseconds: 1000, service: "a-b").encoded()
        ready[15] = UInt8(ascii: "/")
        expectUnreadable(ready, .badServiceName)
        #expect(throws: ProtocolError.self) { try ServiceName(validating: "") }
        #expect(throws: ProtocolError.self) { try ServiceName(validating: "has space") }
        #expect(throws: ProtocolError.self) { try ServiceName(validating: String(repeating: "a", count: 256)) }
        #expect(throws: ProtocolError.self) { try ServiceName(validating: "é") }
        #expect((try? ServiceName(validating: String(repeating: "a", count: 255)))?.byteCount == 255)
    }

    @Test func reasonsLongerThan1KiB() {
        let base = ControlMessage.disconnect(reason: "").encoded()
        #expect(parseError(base + Array(repeating: 0x61, count: 1024)) == nil)
        expectUnreadable(base + Array(repeating: 0x61, count: 1025), .reasonTooLong)
        let failed = ControlMessage.failed(jobID: .random(), index: 0, code: .malformed, reason: "").encoded()
        expectUnreadable(failed + Array(repeating: 0x61, count: 1025), .reasonTooLong)
        let reject = ControlMessage.reject(deliveryID: 1, code: .malformed, retryable: false, reason: "").encoded()
        expectUnreadable(reject + Array(repeating: 0x61, count: 1025), .reasonTooLong)
    }

    @Test func invalidUTF8InAReasonIsRepairedNotRefused() throws {
        let bytes = ControlMessage.disconnect(reason: "").encoded() + [0x61, 0xFF, 0x62]
        let message = try bytes.withUnsafeBytes { try Message.parse($0) }
        guard case .disconnect(let reason) = message else {
            Issue.record("not DISCONNECT")
            return
        }
        #expect(reason.string == "a\u{FFFD}b")
    }

    @Test func rejectRetryableIsZeroOrOne() {
        var bytes = ControlMessage.reject(deliveryID: 1, code: .malformed, retryable: true, reason: "x").encoded()
        bytes[15] = 2
        expectUnreadable(bytes, .badField)
    }
}

/// One valid message of each control command.
func sampleControl(_ command: Command) -> ControlMessage {
    switch command {
    case .cancel: .cancel(jobID: JobID(high: 1, low: 2))
    case .ping: .ping
    case .pong: .pong
    case .failed: .failed(jobID: JobID(high: 1, low: 2), index: 3, code: .noWorker, reason: "")
    case .busy: .busy(jobID: JobID(high: 1, low: 2), index: 3, retryAfterMilliseconds: 100)
    case .ready: .ready(credit: 8, heartbeatMilliseconds: 2500, service: "svc")
    case .reject: .reject(deliveryID: 9, code: .workerFailure, retryable: true, reason: "")
    case .heartbeat: .heartbeat
    case .disconnect: .disconnect(reason: "")
    case .credit: .credit(16)
    case .deadline: .deadline(deliveryID: 9, timeLeftMilliseconds: 2000)
    default: fatalError("not a control command: \(command)")
    }
}

@Suite("Malformed input never crashes the parser")
struct ParserRobustnessTests {
    @Test func truncatingAnyValidMessage() async {
        await propertyCheck(count: 200, input: Gens.anyMessage) { bytes in
            for length in 0..<bytes.count {
                let prefix = Array(bytes[0..<length])
                guard let error = parseError(prefix) else {
                    // Only a reason may be cut and still parse.
                    let command = Command(rawValue: bytes[4])
                    #expect([Command.failed, .reject, .disconnect].contains(command), "\(command) parsed when cut to \(length)")
                    continue
                }
                // A cut fragment either loses its envelope (unreadable) or its body (a length mismatch
                // that can be answered).
                if error.code == .lengthMismatch {
                    #expect(error.failureCode == .malformed && error.jobID != nil)
                } else {
                    #expect(error.isUnreadable, "\(error)")
                }
            }
        }
    }

    @Test func flippingAnyByte() async {
        await propertyCheck(count: 300, input: Gens.anyMessage, Gen.int(in: 0...100_000), Gen<UInt8>.value(in: 1...255)) {
            bytes, position, mask in
            var damaged = bytes
            let at = position % bytes.count
            damaged[at] ^= mask
            let error = parseError(damaged)
            if at < 3 {
                #expect(error?.code == .badSignature)
            } else if at == 3 {
                #expect(error?.code == .unsupportedVersion)
            }
            if let error {
                #expect(error.isUnreadable == (error.failureCode == nil))
                #expect(!error.description.isEmpty)
            }
        }
    }

    @Test func randomGarbage() async {
        await propertyCheck(count: 500, input: Gen<UInt8>.value(in: 0...255).array(of: 0...300)) { bytes in
            var prefixed = bytes
            // Half the inputs get a valid envelope so the parser goes past the first checks.
            if bytes.count > 5 && bytes[0] % 2 == 0 {
                prefixed[0] = 0x53
                prefixed[1] = 0x4D
                prefixed[2] = 0x51
                prefixed[3] = 1
                prefixed[4] = Command.allKnown[Int(bytes[1]) % Command.allKnown.count].rawValue
            }
            _ = parseError(prefixed)
        }
    }
}
