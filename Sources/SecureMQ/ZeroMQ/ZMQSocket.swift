internal import CZeroMQ
import Glibc

/// A libzmq socket. Not thread-safe (libzmq's contract): it is created, used and closed by the
/// one ``SocketThread`` that owns it.
final class ZMQSocket {
    struct Kind: Hashable {
        let raw: Int32
        static let router = Kind(raw: ZMQ_ROUTER)
        static let dealer = Kind(raw: ZMQ_DEALER)
        static let pair = Kind(raw: ZMQ_PAIR)
        static let rep = Kind(raw: ZMQ_REP)
        static let req = Kind(raw: ZMQ_REQ)
    }

    private(set) var handle: UnsafeMutableRawPointer?
    let kind: Kind

    init(context: UnsafeMutableRawPointer, kind: Kind) throws(SecureMQError) {
        guard let handle = zmq_socket(context, kind.raw) else {
            throw SecureMQError.system("zmq_socket", zmq_errno())
        }
        self.handle = handle
        self.kind = kind
    }

    deinit {
        close(linger: .zero)
    }

    var isOpen: Bool { handle != nil }

    /// Set by every operation on the socket. libzmq's descriptor (`ZMQ_FD`) is edge-triggered
    /// and any call may consume its signal, so the owner thread asks `ZMQ_EVENTS` again before
    /// sleeping only for sockets that were used (or whose descriptor fired) since it last asked.
    var touched = true

    private func live() throws(SecureMQError) -> UnsafeMutableRawPointer {
        guard let handle else { throw SecureMQError(.closed, "the socket is closed") }
        touched = true
        return handle
    }

    /// Whether a message waits (`ZMQ_EVENTS` has `ZMQ_POLLIN`); false for a closed socket.
    /// Processes the socket's pending commands, as libzmq requires before polling `ZMQ_FD`.
    var hasMessage: Bool {
        guard let handle else { return false }
        touched = false
        var events: UInt32 = 0
        var size = MemoryLayout<UInt32>.size
        guard zmq_getsockopt(handle, ZMQ_EVENTS, &events, &size) == 0 else { return false }
        return events & UInt32(ZMQ_POLLIN) != 0
    }

    /// The descriptor that becomes readable when the socket may have news (`ZMQ_FD`), or -1.
    var descriptor: Int32 {
        guard let handle else { return -1 }
        var fd: Int32 = -1
        var size = MemoryLayout<Int32>.size
        guard zmq_getsockopt(handle, ZMQ_FD, &fd, &size) == 0 else { return -1 }
        return fd
    }

    // MARK: options

    func set(_ option: Int32, _ value: Int32) throws(SecureMQError) {
        let socket = try live()
        var value = value
        try zmqCheck("zmq_setsockopt") { zmq_setsockopt(socket, option, &value, MemoryLayout<Int32>.size) }
    }

    func set(_ option: Int32, int64 value: Int64) throws(SecureMQError) {
        let socket = try live()
        var value = value
        try zmqCheck("zmq_setsockopt") { zmq_setsockopt(socket, option, &value, MemoryLayout<Int64>.size) }
    }

    func set(_ option: Int32, bytes: UnsafeRawBufferPointer) throws(SecureMQError) {
        let socket = try live()
        try zmqCheck("zmq_setsockopt") { zmq_setsockopt(socket, option, bytes.baseAddress, bytes.count) }
    }

    func set(_ option: Int32, bytes: [UInt8]) throws(SecureMQError) {
        let socket = try live()
        try zmqCheck("zmq_setsockopt") { zmq_setsockopt(socket, option, bytes, bytes.count) }
    }

    func set(_ option: Int32, string: String) throws(SecureMQError) {
        try set(option, bytes: Array(string.utf8))
    }

    func getInt32(_ option: Int32) throws(SecureMQError) -> Int32 {
        let socket = try live()
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try zmqCheck("zmq_getsockopt") { zmq_getsockopt(socket, option, &value, &size) }
        return value
    }

    func getString(_ option: Int32) throws(SecureMQError) -> String {
        let socket = try live()
        var buffer = [CChar](repeating: 0, count: 512)
        var size = buffer.count
        try zmqCheck("zmq_getsockopt") { zmq_getsockopt(socket, option, &buffer, &size) }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: endpoints

    func bind(_ endpoint: String) throws(SecureMQError) {
        let socket = try live()
        do {
            try zmqCheck("zmq_bind") { zmq_bind(socket, endpoint) }
        } catch {
            throw SecureMQError(error.code == .system ? .invalidConfiguration : error.code,
                                "cannot bind \(endpoint): \(error.message)", errno: error.errno, call: "zmq_bind")
        }
    }

    func connect(_ endpoint: String) throws(SecureMQError) {
        let socket = try live()
        do {
            try zmqCheck("zmq_connect") { zmq_connect(socket, endpoint) }
        } catch {
            throw SecureMQError(error.code == .system ? .invalidConfiguration : error.code,
                                "cannot connect to \(endpoint): \(error.message)", errno: error.errno, call: "zmq_connect")
        }
    }

    /// The endpoint actually bound (with the port chosen for `tcp://…:*`).
    var lastEndpoint: String { (try? getString(ZMQ_LAST_ENDPOINT)) ?? "" }

    // MARK: messages

    /// Sends one message part without blocking. The message is emptied on success (libzmq took it).
    func send(_ message: ZMQMessage, more: Bool = false) throws(SecureMQError) -> Bool {
        let socket = try live()
        let flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)
        switch try zmqCall("zmq_msg_send", { zmq_msg_send(message.pointer, socket, flags) }) {
        case .done: return true
        case .wouldBlock: return false
        }
    }

    func send(_ bytes: [UInt8], more: Bool = false) throws(SecureMQError) -> Bool {
        let socket = try live()
        let flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)
        switch try zmqCall("zmq_send", { zmq_send(socket, bytes, bytes.count, flags) }) {
        case .done: return true
        case .wouldBlock: return false
        }
    }

    /// Receives one message part into `message` without blocking.
    func receive(into message: ZMQMessage) throws(SecureMQError) -> Bool {
        let socket = try live()
        switch try zmqCall("zmq_msg_recv", { zmq_msg_recv(message.pointer, socket, ZMQ_DONTWAIT) }) {
        case .done: return true
        case .wouldBlock: return false
        }
    }

    /// Receives every part of one message without blocking; nil when nothing is waiting.
    /// Bounded: a message of more than `maxParts` parts is read to its end and reported as such.
    func receiveMultipart(maxParts: Int = 16) throws(SecureMQError) -> (parts: [ZMQMessage], truncated: Bool)? {
        let first = ZMQMessage()
        guard try receive(into: first) else { return nil }
        var parts = [first]
        var truncated = false
        var more = first.hasMore
        while more {
            let next = ZMQMessage()
            // The rest of a multipart message is already here (libzmq delivers them atomically).
            guard try receive(into: next) else { break }
            more = next.hasMore
            if parts.count < maxParts { parts.append(next) } else { truncated = true }
        }
        return (parts, truncated)
    }

    /// Closes the socket with a bounded linger, so `zmq_ctx_term` never waits forever.
    func close(linger: Duration) {
        guard let handle else { return }
        var ms = Int32(clamping: linger.components.seconds * 1000 + linger.components.attoseconds / 1_000_000_000_000_000)
        zmq_setsockopt(handle, ZMQ_LINGER, &ms, MemoryLayout<Int32>.size)
        zmq_close(handle)
        self.handle = nil
    }
}
