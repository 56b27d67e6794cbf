import SMQProtocol
import Testing

@Suite("Commands, codes, reasons, ids")
struct ValueTypeTests {
    @Test func commandBytesAndNames() {
        let expected: [(Command, UInt8, String)] = [
            (.submit, 0x01, "SUBMIT"), (.cancel, 0x02, "CANCEL"), (.ping, 0x03, "PING"), (.pong, 0x04, "PONG"),
            (.result, 0x11, "RESULT"), (.failed, 0x12, "FAILED"), (.busy, 0x13, "BUSY"), (.ready, 0x21, "READY"),
            (.work, 0x22, "WORK"), (.done, 0x23, "DONE"), (.reject, 0x24, "REJECT"), (.heartbeat, 0x25, "HEARTBEAT"),
            (.disconnect, 0x26, "DISCONNECT"), (.credit, 0x27, "CREDIT"), (.deadline, 0x28, "DEADLINE"),
        ]
        #expect(expected.map(\.0) == Command.allKnown)
        for (command, raw, name) in expected {
            #expect(command.rawValue == raw)
            #expect(command.name == name)
            #expect(command.description == name)
            #expect(!command.senders.isEmpty)
        }
        #expect(Command(rawValue: 0x7F).name == nil)
        #expect(Command(rawValue: 0x7F).description == "0x7f")
        #expect(Command(rawValue: 0x7F).senders.isEmpty)
        #expect(Command.allKnown.filter(\.isFragment) == [.submit, .result, .work, .done])
        #expect(Command.allKnown.filter(\.isRequest) == [.submit, .work])
    }

    @Test func rolesPerCommand() {
        // §3.2: a client may send SUBMIT, CANCEL, PING, DISCONNECT; a worker READY, DONE, REJECT,
        // HEARTBEAT, DISCONNECT, CREDIT.
        #expect(Command.allKnown.filter { $0.senders.contains(.client) } == [.submit, .cancel, .ping, .disconnect])
        #expect(
            Command.allKnown.filter { $0.senders.contains(.worker) } == [.ready, .done, .reject, .heartbeat, .disconnect, .credit])
        #expect(
            Command.allKnown.filter { $0.senders.contains(.broker) }
                == [.pong, .result, .failed, .busy, .work, .heartbeat, .disconnect, .deadline])
    }

    @Test func failureCodes() {
        let all: [FailureCode] = [
            .malformed, .forbidden, .noWorker, .cancelled, .tooLarge, .internalError, .draining, .retriesExhausted, .workerFailure,
        ]
        #expect(all.map(\.rawValue) == [400, 403, 404, 410, 413, 500, 503, 504, 520])
        #expect(all.allSatisfy { $0.name != nil })
        #expect(FailureCode.tooLarge.description == "413 too large")
        #expect(FailureCode(rawValue: 418).description == "418")
        #expect(FailureCode.passedThrough(fromWorker: FailureCode(rawValue: 422)) == FailureCode(rawValue: 422))
        #expect(FailureCode.passedThrough(fromWorker: .internalError) == .workerFailure)
        #expect(FailureCode.passedThrough(fromWorker: FailureCode(rawValue: 0)) == .workerFailure)
        #expect(FailureCode.passedThrough(fromWorker: FailureCode(rawValue: 399)) == .workerFailure)
    }

    @Test func reasonsAreCutOnAUTF8Boundary() {
        #expect(Reason.encodedByteCount(of: "short") == 5)
        let ascii = String(repeating: "a", count: 2000)
        #expect(Reason.encodedByteCount(of: ascii) == 1024)
        // 1023 ASCII bytes then a 4-byte emoji: the emoji does not fit, so the cut is at 1023.
        let emoji = String(repeating: "a", count: 1023) + "😀"
        #expect(Reason.encodedByteCount(of: emoji) == 1023)
        #expect(Reason.truncated(emoji) == String(repeating: "a", count: 1023))
        // 3-byte characters: 341 × 3 = 1023 fits, 342 × 3 does not.
        let euros = String(repeating: "€", count: 400)
        #expect(Reason.encodedByteCount(of: euros) == 1023)
        #expect(Reason.truncated(euros) == String(repeating: "€", count: 341))
        // Exactly 1 KiB stays whole.
        let exact = String(repeating: "é", count: 512)
        #expect(Reason.truncated(exact) == exact)
        let encoded = ControlMessage.disconnect(reason: euros).encoded()
        #expect(encoded.count == 5 + 1023)
    }

    @Test func jobIDs() throws {
        let id = JobID(high: 0x0001_0203_0405_0607, low: 0x0809_0A0B_0C0D_0E0F)
        #expect(id.bytes == Array(0...15))
        #expect(id.description == "000102030405060708090a0b0c0d0e0f")
        #expect(JobID(hex: id.description) == id)
        #expect(JobID(bytes: Array(0...15)) == id)
        #expect(JobID(bytes: [1]) == nil)
        #expect(JobID.random() != JobID.random())
        var buffer = [UInt8](repeating: 0, count: 20)
        buffer.withUnsafeMutableBytes { id.write(to: $0, at: 2) }
        #expect(Array(buffer[2..<18]) == id.bytes)
        #expect(buffer.withUnsafeBytes { JobID(loadingFrom: $0, at: 2) } == id)
    }

    @Test func limits() {
        #expect(ProtocolLimits.default.maxFragment == 1 << 20)
        #expect(ProtocolLimits.default.maxMessageSize == (1 << 20) + 1024)
        // A full-length reason always fits, whatever max-fragment is.
        let longest = ControlMessage.failed(jobID: .random(), index: 0, code: .malformed, reason: String(repeating: "x", count: 5000))
        #expect(ProtocolLimits(maxFragment: 1).maxMessageSize >= longest.encodedSize + 33)
    }

    @Test func envelopeHelpers() {
        let ping = ControlMessage.ping.encoded()
        ping.withUnsafeBytes {
            #expect(Message.hasSignature($0))
            #expect(Message.peekCommand($0) == .ping)
        }
        [UInt8]([0x53, 0x4D, 0x51, 2, 3]).withUnsafeBytes { #expect(Message.peekCommand($0) == nil) }
        [UInt8]([]).withUnsafeBytes { #expect(!Message.hasSignature($0)) }
    }
}
