/// The receiver's limits a message is checked against.
public struct ProtocolLimits: Hashable, Sendable {
    /// The default max-fragment: 1 MiB.
    public static let defaultMaxFragment = 1 << 20

    /// The largest fragment body (request or result) a peer accepts; larger ones get `413`.
    public var maxFragment: Int

    /// The heartbeat intervals a READY may announce (§4.1); outside them the broker answers
    /// DISCONNECT. The codec reads any value: this is the broker's rule to apply.
    public static let heartbeatMilliseconds: ClosedRange<UInt32> = 100...60_000

    /// The defaults: max-fragment 1 MiB.
    public static let `default` = ProtocolLimits()

    /// Makes limits.
    ///
    /// - Parameter maxFragment: The largest fragment body accepted, 1 byte to 4 GiB − 1 (the
    ///   header's `length` field is 4 bytes).
    public init(maxFragment: Int = ProtocolLimits.defaultMaxFragment) {
        precondition((1...Int(UInt32.max)).contains(maxFragment), "max-fragment must be 1 ... 2^32-1 bytes")
        self.maxFragment = maxFragment
    }

    /// The value for `ZMQ_MAXMSGSIZE` (§6): room for a fragment of max-fragment bytes and its
    /// envelope (at most 349 bytes) plus CURVE's 33, and never less than 2 KiB so a FAILED, REJECT
    /// or DISCONNECT with a full 1 KiB reason (up to 1,051 bytes) always fits.
    public var maxMessageSize: Int {
        max(maxFragment, 1024) + 1024
    }
}
