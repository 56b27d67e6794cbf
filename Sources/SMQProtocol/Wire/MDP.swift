/// 7/MDP 0.1 (Majordomo) and 8/MMI as the SecureMQ broker reads and writes them: a pure codec over
/// frames, no socket (PROTOCOL.md §7).
///
/// Frames here are the message as a ROUTER hands it on *after* the routing id:
/// - client request: `[empty]["MDPC01"][service][body…]`; reply the same shape from the broker;
/// - worker: `[empty]["MDPW01"][command][…]`: READY `[service]`, REQUEST (B→W)
///   `[client address][empty][body…]`, REPLY (W→B) the same, HEARTBEAT and DISCONNECT nothing.
///
/// The broker's "client address" in a REQUEST is its 8-byte delivery id (big-endian): the worker
/// echoes it in REPLY, so a reply names its delivery exactly as an SMQ/1 DONE does, and no
/// routing id of one peer is ever shown to another.
public enum MDP {
    /// The client protocol's header frame.
    public static let clientHeader: [UInt8] = Array("MDPC01".utf8)
    /// The worker protocol's header frame.
    public static let workerHeader: [UInt8] = Array("MDPW01".utf8)
    /// The most body frames one MDP message may carry; each is a separate libzmq message the
    /// broker holds, so their number is bounded like everything else a peer can make it hold.
    public static let maxBodyFrames = 64
    /// The length of the client-address frame the broker sends (a delivery id).
    public static let addressLength = 8

    /// Worker commands (RFC 7 §"Worker protocol").
    public enum WorkerCommand: UInt8, Sendable {
        case ready = 0x01, request = 0x02, reply = 0x03, heartbeat = 0x04, disconnect = 0x05
    }

    /// A parsed MDP message from a peer. Bodies stay in the frames: `bodyStart` is the index of
    /// the first body frame.
    public enum Message: Hashable, Sendable {
        /// A client's request; `mmiArgument` is the first body frame as text when the service is
        /// `mmi.*` (the only body the broker reads).
        case request(service: ServiceName, bodyStart: Int, bodyFrames: Int, mmiArgument: String?)
        /// A worker joins a service.
        case ready(service: ServiceName)
        /// A worker's reply to the delivery named in its client-address frame.
        case reply(delivery: UInt64, bodyStart: Int, bodyFrames: Int)
        case heartbeat
        case disconnect

        /// Whether it came from a worker (MDPW01).
        public var isWorker: Bool {
            if case .request = self { return false }
            return true
        }
    }

    /// Why a message is not MDP the broker accepts: one sentence for the log.
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        public let reason: String
        public init(_ reason: String) { self.reason = reason }
        public var description: String { reason }
    }

    /// Whether a multipart message is MDP at all: its first frame is empty (the REQ/DEALER
    /// delimiter). Anything else is left to SMQ/1's rules (one frame, or malformed).
    public static func looksLikeMDP(firstFrame: UnsafeRawBufferPointer) -> Bool { firstFrame.isEmpty }

    /// Parses the frames of one message (routing id excluded).
    ///
    /// - Parameters:
    ///   - frameCount: How many frames the message has.
    ///   - frame: The bytes of frame `i` (`0 ..< frameCount`).
    /// - Returns: The message.
    /// - Throws: ``ParseError`` naming what is wrong; nothing is trusted before it is checked.
    public static func parse(frameCount: Int, frame: (Int) -> UnsafeRawBufferPointer) throws(ParseError) -> Message {
        guard frameCount >= 2 else { throw ParseError("an MDP message needs at least a delimiter and a header frame, got \(frameCount) frame(s)") }
        guard frame(0).isEmpty else { throw ParseError("no empty delimiter frame") }
        let header = frame(1)
        if header.elementsEqual(clientHeader) {
            guard frameCount >= 3 else { throw ParseError("MDPC01 request without a service frame") }
            let service = try serviceName(frame(2))
            guard frameCount >= 4 else { throw ParseError("MDPC01 request for '\(service)' without a body") }
            let bodyFrames = frameCount - 3
            guard bodyFrames <= maxBodyFrames else { throw ParseError("MDPC01 request of \(bodyFrames) body frames (at most \(maxBodyFrames))") }
            var argument: String?
            if service.description.hasPrefix("mmi.") {
                argument = PeerText.escaped(String(decoding: frame(3), as: UTF8.self))
            }
            return .request(service: service, bodyStart: 3, bodyFrames: bodyFrames, mmiArgument: argument)
        }
        guard header.elementsEqual(workerHeader) else {
            throw ParseError("unknown header frame '\(PeerText.escaped(String(decoding: header.prefix(16), as: UTF8.self)))' (\(header.count) bytes)")
        }
        guard frameCount >= 3 else { throw ParseError("MDPW01 message without a command frame") }
        let commandFrame = frame(2)
        guard commandFrame.count == 1 else { throw ParseError("MDPW01 command frame of \(commandFrame.count) bytes (must be 1)") }
        guard let command = WorkerCommand(rawValue: commandFrame[0]) else {
            throw ParseError("unknown MDPW01 command 0x\(String(commandFrame[0], radix: 16))")
        }
        switch command {
        case .ready:
            guard frameCount == 4 else { throw ParseError("READY needs exactly one service frame, got \(frameCount - 3)") }
            return .ready(service: try serviceName(frame(3)))
        case .reply:
            guard frameCount >= 6 else { throw ParseError("REPLY needs a client address, an empty frame and a body, got \(frameCount) frames") }
            let address = frame(3)
            guard address.count == addressLength else { throw ParseError("REPLY to an unknown client address of \(address.count) bytes") }
            guard frame(4).isEmpty else { throw ParseError("REPLY without the empty frame after the client address") }
            let bodyFrames = frameCount - 5
            guard bodyFrames <= maxBodyFrames else { throw ParseError("REPLY of \(bodyFrames) body frames (at most \(maxBodyFrames))") }
            return .reply(delivery: address.loadBigEndian(at: 0), bodyStart: 5, bodyFrames: bodyFrames)
        case .heartbeat:
            guard frameCount == 3 else { throw ParseError("HEARTBEAT with \(frameCount - 3) extra frame(s)") }
            return .heartbeat
        case .disconnect:
            guard frameCount == 3 else { throw ParseError("DISCONNECT with \(frameCount - 3) extra frame(s)") }
            return .disconnect
        case .request:
            throw ParseError("REQUEST is sent by a broker, not to it")
        }
    }

    private static func serviceName(_ bytes: UnsafeRawBufferPointer) throws(ParseError) -> ServiceName {
        guard !bytes.isEmpty else { throw ParseError("empty service frame") }
        guard ServiceName.isValid(bytes) else {
            throw ParseError("service name of \(bytes.count) bytes is not 1–255 of [A-Za-z0-9._-]")
        }
        return ServiceName(validatedBytes: bytes)
    }

    // MARK: encoding (frames after the routing id)

    /// `[empty][MDPW01][0x04]`.
    public static let heartbeatFrames: [[UInt8]] = [[], workerHeader, [WorkerCommand.heartbeat.rawValue]]
    /// `[empty][MDPW01][0x05]`.
    public static let disconnectFrames: [[UInt8]] = [[], workerHeader, [WorkerCommand.disconnect.rawValue]]

    /// The frames before the body of a REQUEST to a worker: `[empty][MDPW01][0x02][delivery][empty]`.
    public static func requestHeader(delivery: UInt64) -> [[UInt8]] {
        [[], workerHeader, [WorkerCommand.request.rawValue], bigEndian(delivery), []]
    }

    /// The frames before the body of a reply to a client: `[empty][MDPC01][service]`.
    public static func replyHeader(service: ServiceName) -> [[UInt8]] {
        [[], clientHeader, Array(service.description.utf8)]
    }

    /// The 8 bytes of a delivery id as the client-address frame.
    public static func bigEndian(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) }
    }
}
