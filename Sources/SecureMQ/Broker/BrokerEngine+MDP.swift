internal import CZeroMQ
import SMQBroker
import SMQProtocol

/// The body frames of one 7/MDP request or reply, as received: the core keeps this handle like an
/// SMQ/1 fragment's message and never reads it.
final class MDPBody {
    let frames: [ZMQMessage]
    init(frames: [ZMQMessage]) { self.frames = frames }
}

/// 7/MDP on the broker's ROUTER (PROTOCOL.md §7, C50–C54): frames in, parsed by the pure codec
/// (`MDP.parse`), events into the same ``BrokerCore``; MDP effects out through the sink.
extension BrokerEngine {
    /// Frames read of one MDP message at most: delimiter, header, command, address, empty, body.
    static var maxMDPFrames: Int { MDP.maxBodyFrames + 5 }

    /// Reads the rest of a multipart message whose first frame (`first`) is empty, parses it as
    /// 7/MDP and hands it to the core. Every malformed message is logged (rate-limited) and dropped.
    func receiveMDP(routing: ZMQMessage, first: ZMQMessage, now: UInt64) {
        var frames = [first]
        var extra = 0
        var more = first.hasMore
        while more {
            let part = ZMQMessage()
            // The rest of a multipart message is already here (libzmq delivers them atomically).
            guard (try? server.socket.receive(into: part)) == true else { break }
            more = part.hasMore
            if frames.count < Self.maxMDPFrames { frames.append(part) } else { extra += 1 }
        }
        guard let connection = connection(routing, first, now: now, mdp: true) else { return }
        if extra > 0 {
            core.receiveMDPMalformed(MDP.ParseError("a message of \(frames.count + extra) frames (at most \(Self.maxMDPFrames))"),
                                     from: connection, now: now)
            return
        }
        do throws(MDP.ParseError) {
            let message = try MDP.parse(frameCount: frames.count) { frames[$0].bytes }
            switch message {
            case .request(_, let start, _, _), .reply(_, let start, _):
                let body = Array(frames[start...])
                let bytes = body.reduce(0) { $0 &+ $1.count }
                core.receiveMDP(message, body: MDPBody(frames: body), bodyBytes: bytes, from: connection, now: now)
            case .ready, .heartbeat, .disconnect:
                core.receiveMDP(message, body: first, bodyBytes: 0, from: connection, now: now)
            }
        } catch {
            core.receiveMDPMalformed(error, from: connection, now: now)
        }
    }

    // MARK: BrokerSink (7/MDP)

    func sendMDPRequest(_ body: AnyObject, delivery: UInt64, to address: [UInt8]) -> SendOutcome {
        do throws(SecureMQError) {
            guard try sendAddress(address) else { return .full }
            for frame in MDP.requestHeader(delivery: delivery) { _ = try server.socket.send(frame, more: true) }
            try sendBody(body, consume: false)
            return .sent
        } catch {
            return outcome(of: error)
        }
    }

    func sendMDPReply(_ body: AnyObject, service: String, to address: [UInt8]) -> SendOutcome {
        do throws(SecureMQError) {
            guard try sendAddress(address) else { return .full }
            _ = try server.socket.send([], more: true)
            _ = try server.socket.send(MDP.clientHeader, more: true)
            _ = try server.socket.send(Array(service.utf8), more: true)
            try sendBody(body, consume: true)
            return .sent
        } catch {
            return outcome(of: error)
        }
    }

    func sendMDP(_ frames: [[UInt8]], to address: [UInt8]) -> SendOutcome {
        do throws(SecureMQError) {
            guard try sendAddress(address) else { return .full }
            for (index, frame) in frames.enumerated() { _ = try server.socket.send(frame, more: index < frames.count - 1) }
            return .sent
        } catch {
            return outcome(of: error)
        }
    }

    func smqFragment(fromMDP body: AnyObject, command: Command, service: String, jobID: JobID, index: UInt32, count: UInt32) -> AnyObject? {
        guard let mdp = body as? MDPBody, mdp.frames.count == 1, let name = try? ServiceName(validating: service) else { return nil }
        let source = mdp.frames[0].bytes
        guard source.count <= limits.maxFragment else { return nil }
        let isRequest = command == .submit
        let header = FragmentHeader(jobID: jobID, index: index, count: count, offset: 0,
                                    totalLength: isRequest ? UInt64(source.count) : 0,
                                    length: UInt32(source.count), digest: SHA256.hash(source))
        let message = ZMQMessage(size: Fragment.encodedSize(serviceLength: name.byteCount, bodyLength: source.count))
        let buffer = message.mutableBytes
        let offset = Fragment.write(into: buffer, command: command, tag: 0, service: name, header: header)
        if !source.isEmpty { UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]).copyMemory(from: source) }
        return message
    }

    /// The body frames of an MDP handle (by reference unless consumed), or an SMQ/1 fragment
    /// message's body as one frame. The last frame ends the message.
    private func sendBody(_ body: AnyObject, consume: Bool) throws(SecureMQError) {
        if let mdp = body as? MDPBody {
            for (index, frame) in mdp.frames.enumerated() {
                let more = index < mdp.frames.count - 1
                if consume {
                    _ = try server.socket.send(frame, more: more)
                } else {
                    zmq_msg_copy(sendScratch.pointer, frame.pointer)
                    _ = try server.socket.send(sendScratch, more: more)
                }
            }
            return
        }
        let message = unsafeDowncast(body, to: ZMQMessage.self)
        let bytes = message.bytes
        var start = bytes.count
        if bytes.count > Fragment.serviceOffset {
            start = min(bytes.count, Fragment.bodyOffset(serviceLength: Int(bytes[Fragment.serviceOffset])))
        }
        let part = ZMQMessage(size: bytes.count - start)
        if start < bytes.count { part.mutableBytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[start...])) }
        _ = try server.socket.send(part)
    }
}
