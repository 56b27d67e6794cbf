import PropertyBased
import SMQProtocol
import Testing

/// What a receiver gets for a reason the sender gave.
func expectedAfterRoundTrip(_ message: ControlMessage) -> ControlMessage {
    switch message {
    case .failed(let j, let i, let c, let r): .failed(jobID: j, index: i, code: c, reason: PeerText.escaped(Reason.truncated(r)))
    case .reject(let d, let c, let t, let r): .reject(deliveryID: d, code: c, retryable: t, reason: PeerText.escaped(Reason.truncated(r)))
    case .disconnect(let r): .disconnect(reason: PeerText.escaped(Reason.truncated(r)))
    default: message
    }
}

@Suite("Codec round trips")
struct CodecRoundTripTests {
    @Test func fragmentMessagesRoundTrip() async {
        await propertyCheck(count: 300, input: Gens.fragment) { sample in
            let bytes = sample.bytes
            #expect(bytes.count == Fragment.encodedSize(serviceLength: sample.service.byteCount, bodyLength: sample.body.count))
            try bytes.withUnsafeBytes { raw in
                let message = try Message.parse(raw)
                #expect(message.command == sample.command)
                let view = try #require(message.fragment)
                #expect(view.command == sample.command)
                #expect(view.tag == sample.tag)
                #expect(view.service.matches(sample.service))
                #expect(view.service.name == sample.service)
                #expect(view.header == sample.header)
                #expect(view.header.isLast == (sample.header.index == sample.header.count - 1))
                #expect(Array(view.body) == sample.body)
                #expect(view.bodyRange == Fragment.bodyOffset(serviceLength: sample.service.byteCount)..<bytes.count)
                // A view, not a copy: the body is the caller's bytes.
                #expect(view.body.baseAddress == raw.baseAddress! + view.bodyRange.lowerBound)
                #expect(ControlMessage(message) == nil)
            }
        }
    }

    @Test func controlMessagesRoundTrip() async {
        await propertyCheck(count: 500, input: Gens.control) { sent in
            let bytes = sent.encoded()
            #expect(bytes.count == sent.encodedSize)
            let message = try bytes.withUnsafeBytes { try Message.parse($0) }
            #expect(message.command == sent.command)
            #expect(ControlMessage(message) == expectedAfterRoundTrip(sent))
            #expect(message.fragment == nil)
        }
    }

    @Test func writeIntoACallersBufferMatchesEncoded() async {
        await propertyCheck(count: 100, input: Gens.control) { sent in
            var buffer = [UInt8](repeating: 0xAA, count: 2048)
            let written = buffer.withUnsafeMutableBytes { sent.write(into: $0) }
            #expect(Array(buffer[0..<written]) == sent.encoded())
            #expect(buffer[written...].allSatisfy { $0 == 0xAA })
        }
    }

    @Test func fieldsAreBigEndianAtTheirOffsets() throws {
        let jobID = try #require(JobID(hex: "000102030405060708090a0b0c0d0e0f"))
        let failed = ControlMessage.failed(jobID: jobID, index: 0x0102_0304, code: .tooLarge, reason: "big").encoded()
        #expect(Array(failed[0..<5]) == [0x53, 0x4D, 0x51, 0x01, 0x12])
        #expect(Array(failed[5..<21]) == Array(0...15))
        #expect(Array(failed[21..<25]) == [1, 2, 3, 4])
        #expect(Array(failed[25..<27]) == [0x01, 0x9D])  // 413
        #expect(Array(failed[27...]) == Array("big".utf8))

        let reject = ControlMessage.reject(deliveryID: 0x0102_0304_0506_0708, code: .malformed, retryable: true, reason: "").encoded()
        #expect(reject == [0x53, 0x4D, 0x51, 0x01, 0x24, 1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0x90, 0x01])

        let ready = ControlMessage.ready(credit: 32, heartbeatMilliseconds: 1000, service: "echo").encoded()
        #expect(ready == [0x53, 0x4D, 0x51, 0x01, 0x21, 0, 0, 0, 32, 0, 0, 0x03, 0xE8, 4] + Array("echo".utf8))

        let header = FragmentHeader(
            jobID: jobID, index: 2, count: 3, offset: 0x10, totalLength: 0x20, length: 4, digest: SHA256.hash([9, 9, 9, 9]))
        let submit = Fragment.encode(command: .submit, tag: 0, service: "s", header: header, body: [9, 9, 9, 9])
        #expect(submit.count == 95 + 4)
        #expect(Array(submit[13..<15]) == [1, UInt8(ascii: "s")])
        let h = Array(submit[15..<95])
        #expect(Array(h[0..<4]) == [1, 1, 0, 0])  // version 1, LAST, reserved
        #expect(Array(h[4..<20]) == Array(0...15))
        #expect(Array(h[20..<28]) == [0, 0, 0, 2, 0, 0, 0, 3])
        #expect(Array(h[28..<44]) == [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20])
        #expect(Array(h[44..<48]) == [0, 0, 0, 4])
        #expect(Array(h[48..<80]) == SHA256.hash([9, 9, 9, 9]).bytes)
    }

    @Test func rewriteTurnsSubmitIntoWorkInPlace() throws {
        let body = [UInt8](repeating: 7, count: 4096)
        let header = FragmentHeader(
            jobID: .random(), index: 0, count: 1, offset: 0, totalLength: 4096, length: 4096, digest: SHA256.hash(body))
        var bytes = Fragment.encode(command: .submit, tag: 0, service: "hash.sha-256_v1", header: header, body: body)
        let before = bytes
        try bytes.withUnsafeMutableBytes { raw in
            let view = try #require(try Message.parse(UnsafeRawBufferPointer(raw)).fragment)
            #expect(view.command == .submit)
            Fragment.rewriteCommandAndTag(in: raw, command: .work, tag: 0xDEAD_BEEF_0000_0001)
            guard case .work(let work) = try Message.parse(UnsafeRawBufferPointer(raw)) else {
                Issue.record("not WORK")
                return
            }
            #expect(work.tag == 0xDEAD_BEEF_0000_0001)
            #expect(work.header == header)
            #expect(work.body.baseAddress == view.body.baseAddress)
        }
        #expect(bytes[4] == Command.work.rawValue)
        #expect(Array(bytes[5..<13]) == [0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 1])
        #expect(bytes[13...] == before[13...])
    }

    @Test func rewriteTurnsDoneIntoResultWithTheWorkerTag() throws {
        let key: [UInt8] = Array(1...32)
        let tag = key.withUnsafeBytes { Fragment.workerTag(publicKey: $0) }
        let header = FragmentHeader(jobID: .random(), index: 1, count: 2, length: 1, digest: SHA256.hash([0]))
        var bytes = Fragment.encode(command: .done, tag: 42, service: "x", header: header, body: [0])
        bytes.withUnsafeMutableBytes { Fragment.rewriteCommandAndTag(in: $0, command: .result, tag: tag) }
        #expect(Array(bytes[5..<13]) == Array(key[0..<8]))
        let message = try bytes.withUnsafeBytes { try Message.parse($0) }
        guard case .result(let view) = message else {
            Issue.record("not RESULT")
            return
        }
        #expect(view.tag == tag)
    }

    @Test func writeLeavesRoomForTheBodyAtTheReturnedOffset() throws {
        let service: ServiceName = "files"
        let body: [UInt8] = Array("chunk read straight into the message".utf8)
        let header = FragmentHeader(
            jobID: .random(), index: 0, count: 1, offset: 0, totalLength: UInt64(body.count),
            length: UInt32(body.count), digest: SHA256.hash(body))
        let size = Fragment.encodedSize(serviceLength: service.byteCount, bodyLength: body.count)
        var buffer = [UInt8](repeating: 0, count: size)
        try buffer.withUnsafeMutableBytes { raw in
            let bodyOffset = Fragment.write(into: raw, command: .submit, tag: 0, service: service, header: header)
            #expect(bodyOffset == Fragment.bodyOffset(serviceLength: 5))
            // The caller fills the body in place, as a read(2) would.
            body.withUnsafeBytes { raw.baseAddress!.advanced(by: bodyOffset).copyMemory(from: $0.baseAddress!, byteCount: body.count) }
            let view = try #require(try Message.parse(UnsafeRawBufferPointer(raw)).fragment)
            #expect(Array(view.body) == body)
        }
        #expect(buffer == Fragment.encode(command: .submit, tag: 0, service: service, header: header, body: body))
    }
}
