/// The command byte of an SMQ/1 message (offset 4).
///
/// An open set: any byte can be held, so a message with a command this version does not know can
/// still be named in a log line. ``Message/parse(_:limits:)`` rejects unknown commands with
/// ``ProtocolError/Code/unknownCommand``.
public struct Command: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The byte on the wire.
    public var rawValue: UInt8

    /// Wraps a command byte.
    ///
    /// - Parameter rawValue: The byte at offset 4 of a message.
    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// One fragment of a job, client to broker (§3). Fragment layout, tag 0.
    public static let submit = Command(rawValue: 0x01)
    /// End a job, client to broker.
    public static let cancel = Command(rawValue: 0x02)
    /// Client liveness; the broker answers ``pong``.
    public static let ping = Command(rawValue: 0x03)
    /// The broker's answer to ``ping``.
    public static let pong = Command(rawValue: 0x04)
    /// The result of one fragment, broker to client. Fragment layout, tag = worker tag.
    public static let result = Command(rawValue: 0x11)
    /// A job failed, broker to client.
    public static let failed = Command(rawValue: 0x12)
    /// The broker's byte budget is full: resend later.
    public static let busy = Command(rawValue: 0x13)
    /// A worker joins a service.
    public static let ready = Command(rawValue: 0x21)
    /// One fragment to process, broker to worker. Fragment layout, tag = delivery id.
    public static let work = Command(rawValue: 0x22)
    /// A worker's result. Fragment layout, tag = the WORK's delivery id.
    public static let done = Command(rawValue: 0x23)
    /// A worker could not process a delivery.
    public static let reject = Command(rawValue: 0x24)
    /// Liveness between broker and worker.
    public static let heartbeat = Command(rawValue: 0x25)
    /// The sender is leaving, or the peer must leave.
    public static let disconnect = Command(rawValue: 0x26)
    /// A worker raises its credit.
    public static let credit = Command(rawValue: 0x27)
    /// The time left to the deadline of the delivery whose WORK follows, broker to worker (C45).
    public static let deadline = Command(rawValue: 0x28)

    /// Every command SMQ/1 defines.
    public static let allKnown: [Command] = [
        .submit, .cancel, .ping, .pong, .result, .failed, .busy,
        .ready, .work, .done, .reject, .heartbeat, .disconnect, .credit, .deadline,
    ]

    /// The protocol's name for the command (`"SUBMIT"`), or nil when SMQ/1 does not define it.
    public var name: String? {
        switch self {
        case .submit: "SUBMIT"
        case .cancel: "CANCEL"
        case .ping: "PING"
        case .pong: "PONG"
        case .result: "RESULT"
        case .failed: "FAILED"
        case .busy: "BUSY"
        case .ready: "READY"
        case .work: "WORK"
        case .done: "DONE"
        case .reject: "REJECT"
        case .heartbeat: "HEARTBEAT"
        case .disconnect: "DISCONNECT"
        case .credit: "CREDIT"
        case .deadline: "DEADLINE"
        default: nil
        }
    }

    /// Whether SMQ/1 defines this command.
    public var isKnown: Bool { name != nil }

    /// Whether the command uses the shared fragment layout of §2.1 (SUBMIT, WORK, DONE, RESULT).
    public var isFragment: Bool {
        self == .submit || self == .work || self == .done || self == .result
    }

    /// Whether the command carries a request fragment (SUBMIT, WORK), whose header must satisfy
    /// `offset + length ≤ total-length`; DONE and RESULT carry results.
    public var isRequest: Bool {
        self == .submit || self == .work
    }

    /// Who may send a command (§3.2, §4): what the broker checks a peer's role against.
    public struct Senders: OptionSet, Hashable, Sendable {
        public var rawValue: UInt8

        /// Makes a set from its bits.
        ///
        /// - Parameter rawValue: bit 0 client, bit 1 worker, bit 2 broker.
        public init(rawValue: UInt8) {
            self.rawValue = rawValue
        }

        /// A peer with the client role.
        public static let client = Senders(rawValue: 1 << 0)
        /// A peer with the worker role.
        public static let worker = Senders(rawValue: 1 << 1)
        /// The broker.
        public static let broker = Senders(rawValue: 1 << 2)
    }

    /// Who may send this command; empty for an unknown command.
    ///
    /// A broker answers a command its peer's role may not send with DISCONNECT (§2.3). A key with
    /// role `both` uses client commands on one connection and worker commands on another.
    public var senders: Senders {
        switch self {
        case .submit, .cancel, .ping: .client
        case .pong, .result, .failed, .busy, .work, .deadline: .broker
        case .ready, .done, .reject, .credit: .worker
        case .heartbeat: [.worker, .broker]
        case .disconnect: [.client, .worker, .broker]
        default: []
        }
    }

    /// The name, or the byte in hex for an unknown command (`"0x7f"`).
    public var description: String {
        if let name { return name }
        let digits = Array("0123456789abcdef")
        return "0x" + String(digits[Int(rawValue >> 4)]) + String(digits[Int(rawValue & 0xF)])
    }
}
