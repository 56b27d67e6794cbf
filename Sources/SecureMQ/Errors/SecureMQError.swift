/// An error from SecureMQ's socket layer or roles, with a code a program can switch on and a
/// message a person can act on.
public struct SecureMQError: Error, Hashable, Sendable, CustomStringConvertible {
    /// An open set of error codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public var description: String { name }

        /// The server's ZAP handler refused our key: it is not on the server's allowlist.
        public static let rejectedByServer = Code(name: "rejectedByServer")
        /// CURVE handshakes keep failing: the server key is wrong, or the peer is not a SecureMQ server.
        public static let handshakeFailed = Code(name: "handshakeFailed")
        /// Nothing answered at the endpoint within the connect timeout.
        public static let unreachable = Code(name: "unreachable")
        /// An operation's deadline passed.
        public static let timedOut = Code(name: "timedOut")
        /// A job's or a request's deadline passed before it was done. ``SecureMQError/status`` is
        /// 408 (PROTOCOL.md C45), whether the broker or the client's own timer ended it.
        public static let deadlineExceeded = Code(name: "deadlineExceeded")
        /// The socket, connection or context was closed.
        public static let closed = Code(name: "closed")
        /// The caller's task was cancelled.
        public static let cancelled = Code(name: "cancelled")
        /// A message above the configured maximum size.
        public static let messageTooLarge = Code(name: "messageTooLarge")
        /// The peer is not (or no longer) connected.
        public static let peerUnreachable = Code(name: "peerUnreachable")
        /// Bad configuration: an endpoint, an option, a domain.
        public static let invalidConfiguration = Code(name: "invalidConfiguration")
        /// A job failed at the broker or a worker; ``SecureMQError/status`` has the SMQ/1
        /// failure code (400, 403, 404, 410, 413, 500, 503, 504, 520) and
        /// ``SecureMQError/fragmentIndex`` the fragment, if one was named.
        public static let jobFailed = Code(name: "jobFailed")
        /// A result failed its integrity check, or the gathered results are inconsistent.
        public static let integrity = Code(name: "integrity")
        /// The broker told us to leave (revoked key, role violation, shutdown).
        public static let disconnected = Code(name: "disconnected")
        /// A libzmq call failed; ``SecureMQError/errno`` and ``SecureMQError/call`` say which.
        public static let system = Code(name: "system")
    }

    public let code: Code
    public let message: String
    /// For `.system`: the errno libzmq reported.
    public let errno: Int32?
    /// For `.system`: the failing call's name.
    public let call: String?
    /// For `.jobFailed`: the SMQ/1 failure code.
    public let status: UInt16?
    /// For `.jobFailed`: the fragment that failed the job (nil: the job as a whole).
    public let fragmentIndex: UInt32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil, call: String? = nil,
                status: UInt16? = nil, fragmentIndex: UInt32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.call = call
        self.status = status
        self.fragmentIndex = fragmentIndex
    }

    public var description: String { message }
}
