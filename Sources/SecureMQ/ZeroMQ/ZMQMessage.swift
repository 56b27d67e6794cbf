internal import CZeroMQ

/// One libzmq message (`zmq_msg_t`), kept at a stable heap address: libzmq's messages are opaque
/// and must not be moved by value while initialised. Confined to one thread, like its socket.
final class ZMQMessage {
    let pointer: UnsafeMutablePointer<zmq_msg_t>

    init() {
        pointer = .allocate(capacity: 1)
        zmq_msg_init(pointer)
    }

    /// A message of `size` bytes for the caller to fill (`withUnsafeMutableBytes`).
    init(size: Int) {
        pointer = .allocate(capacity: 1)
        zmq_msg_init_size(pointer, size)
    }

    deinit {
        zmq_msg_close(pointer)
        pointer.deallocate()
    }

    var count: Int { zmq_msg_size(pointer) }

    var hasMore: Bool { zmq_msg_more(pointer) != 0 }

    var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(pointer), count: zmq_msg_size(pointer))
    }

    var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(pointer), count: zmq_msg_size(pointer))
    }

    var array: [UInt8] { Array(bytes) }

    /// A metadata property of a received message (`User-Id`, `Peer-Address`…); case-sensitive.
    func property(_ name: String) -> String? {
        guard let value = zmq_msg_gets(pointer, name) else { return nil }
        return String(cString: value)
    }

    /// Calls `body` with the raw C string of a property, without allocating.
    func withProperty<R>(_ name: UnsafePointer<CChar>, _ body: (UnsafePointer<CChar>?) -> R) -> R {
        body(zmq_msg_gets(pointer, name))
    }
}

extension ZMQMessage {
    /// Makes this message share `other`'s content (zmq_msg_copy: a reference, not a byte copy).
    func copy(from other: ZMQMessage) {
        zmq_msg_copy(pointer, other.pointer)
    }
}
