public import SMQProtocol

/// What became of one send, as the adapter's socket reports it.
public enum SendOutcome: Sendable, Hashable {
    /// The transport took the message.
    case sent
    /// The peer's pipe is full (it does not read): nothing was sent; try again later.
    case full
    /// The peer's connection is gone.
    case gone
}

/// Where the core's decisions go: the adapter that owns the socket implements it and carries each
/// effect out at once, on the core's thread. A sink never calls back into the core.
///
/// Bodies are opaque handles the adapter gave the core with each fragment (for ZeroMQ, the
/// received `zmq_msg_t`); the core never reads or copies them.
public protocol BrokerSink: AnyObject {
    /// Sends a kept fragment on, rewritten in place to `command` with `tag` (SUBMIT → WORK,
    /// DONE → RESULT).
    ///
    /// - Parameters:
    ///   - body: The handle the fragment arrived with.
    ///   - command: `.work` or `.result`.
    ///   - tag: The delivery id (WORK) or the worker's tag (RESULT).
    ///   - keep: true when the core keeps the message (a WORK it may requeue): send a reference
    ///     and leave the original intact; false when the message may be consumed.
    ///   - address: The peer's routing id.
    /// - Returns: What the transport did.
    func forward(_ body: AnyObject, as command: Command, tag: UInt64, keep: Bool, to address: [UInt8]) -> SendOutcome

    /// Sends an encoded control message (or a broker-made RESULT) to a peer.
    ///
    /// - Parameters:
    ///   - bytes: One SMQ/1 frame.
    ///   - address: The peer's routing id.
    /// - Returns: What the transport did.
    func send(_ bytes: [UInt8], to address: [UInt8]) -> SendOutcome

    /// Nothing is queued or in flight any more while draining.
    func drained()

    // 7/MDP (PROTOCOL.md §7, C50–C54); defaults in BrokerSink+MDP.swift refuse them.

    /// Sends a REQUEST to an MDP worker, the body sent by reference (the core keeps it):
    /// `[empty][MDPW01][0x02][delivery][empty][body…]`.
    ///
    /// - Parameters:
    ///   - body: An MDP request's handle, or an SMQ/1 SUBMIT (its fragment body is sent).
    ///   - delivery: The delivery id, sent as the client address.
    ///   - address: The worker's routing id.
    func sendMDPRequest(_ body: AnyObject, delivery: UInt64, to address: [UInt8]) -> SendOutcome

    /// Sends a reply to an MDP client, `[empty][MDPC01][service][body…]`; the body may be consumed.
    ///
    /// - Parameters:
    ///   - body: An MDP worker's reply handle, or an SMQ/1 DONE (its fragment body is sent).
    ///   - service: The request's service.
    ///   - address: The client's routing id.
    func sendMDPReply(_ body: AnyObject, service: String, to address: [UInt8]) -> SendOutcome

    /// Sends MDP frames the core made (HEARTBEAT, DISCONNECT, an `mmi.*` answer).
    func sendMDP(_ frames: [[UInt8]], to address: [UInt8]) -> SendOutcome

    /// Makes an SMQ/1 fragment message from a one-frame MDP body, with its SHA-256 digest: a SUBMIT
    /// (for an SMQ/1 worker) or a DONE (for an SMQ/1 client); the core then forwards it as usual.
    ///
    /// - Returns: The new handle, or nil when the body is not one frame within the size limit.
    func smqFragment(fromMDP body: AnyObject, command: Command, service: String, jobID: JobID, index: UInt32, count: UInt32) -> AnyObject?
}
