/// How a CURVE client socket connects, and when it gives up.
public struct ConnectionOptions: Sendable {
    /// Fail with `.unreachable` if no handshake succeeds within this time (nil: keep trying).
    public var connectTimeout: Duration? = .seconds(10)
    /// Consecutive failed CURVE handshakes after which the connection fails with
    /// `.handshakeFailed` (a wrong server key fails every time; libzmq alone would retry forever).
    public var handshakeFailureLimit: Int = 2
    /// Before the first handshake: connection attempts refused outright (nothing listening at
    /// the endpoint) after which the connection fails with `.unreachable`, instead of waiting
    /// the whole ``connectTimeout``. With the default intervals, 3 attempts take 0.4–1 s, so a
    /// broker that is just starting still gets a chance. nil: wait the connect timeout (a worker
    /// started before its broker, on purpose). A connection that was ever up is never cut short
    /// by this: a restarting broker is waited for.
    public var refusedConnectionLimit: Int? = 3
    /// The first reconnect delay; libzmq adds up to as much again at random, and doubles it up to
    /// ``reconnectIntervalMax``. 200 ms (libzmq's default is 100 ms): short enough that a refused
    /// connection is noticed within about a second, long enough not to spin.
    public var reconnectInterval: Duration = .milliseconds(200)
    public var reconnectIntervalMax: Duration = .seconds(32)
    /// The largest message accepted, in bytes (a larger frame makes libzmq drop the peer).
    public var maxMessageSize: Int = 1_048_576 + 1024
    /// Messages queued per direction before sends wait.
    public var highWaterMark: Int32 = 1000
    /// How long a CURVE handshake may take.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How long unsent messages are kept when closing.
    public var linger: Duration = .milliseconds(500)

    /// Extra ZMTP handshake properties (`X-…`). Only tests use it, to play a peer that claims
    /// things about itself: the broker must never believe them.
    var handshakeProperties: [(name: String, value: String)] = []

    public init() {}
}
