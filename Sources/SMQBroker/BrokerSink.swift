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
}
