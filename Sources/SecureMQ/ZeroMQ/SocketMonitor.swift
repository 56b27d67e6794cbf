internal import CZeroMQ
import Synchronization

/// Reads a socket's monitor events (zmq_socket_monitor(3)) on the socket's owner thread.
///
/// libzmq 4.3.4 sends each event as two frames: 6 bytes (event: UInt16, value: UInt32, host
/// byte order) and the endpoint. Stopping matters: a monitor's PAIR reader closed while the
/// monitored socket still reports deadlocks libzmq's I/O thread, so ``stop()`` turns the monitor
/// off first, drains the PAIR, and only then closes it.
final class SocketMonitor {
    struct Event {
        let code: Int32
        let value: UInt32
        let endpoint: String
    }

    private static let counter = Atomic<Int>(0)

    private let monitored: ZMQSocket
    private let pair: ZMQSocket
    private var registration: SocketThread.Registration?
    private let thread: SocketThread

    init(socket: ZMQSocket, context: UnsafeMutableRawPointer, thread: SocketThread, events: Int32,
         onEvent: @escaping (Event) -> Void) throws(SecureMQError) {
        let endpoint = "inproc://securemq.monitor.\(Self.counter.add(1, ordering: .relaxed).newValue)"
        guard let handle = socket.handle else { throw SecureMQError(.closed, "cannot monitor a closed socket") }
        try zmqCheck("zmq_socket_monitor") { zmq_socket_monitor(handle, endpoint, events) }
        monitored = socket
        self.thread = thread
        pair = try ZMQSocket(context: context, kind: .pair)
        try pair.set(ZMQ_LINGER, 0)
        try pair.connect(endpoint)
        let pair = self.pair
        registration = thread.register(pair, onReadable: {
            while let event = Self.read(pair) { onEvent(event) }
        })
    }

    private static func read(_ pair: ZMQSocket) -> Event? {
        guard let received = try? pair.receiveMultipart(maxParts: 2), received.parts.count == 2,
              received.parts[0].count == 6 else { return nil }
        let raw = received.parts[0].bytes
        let code = raw.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        let value = raw.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
        return Event(code: Int32(code), value: value,
                     endpoint: String(decoding: received.parts[1].bytes, as: UTF8.self))
    }

    /// Turns the monitor off, drains it and closes its reader. Call before closing the socket.
    func stop() {
        if let registration { thread.unregister(registration) }
        registration = nil
        if let handle = monitored.handle { zmq_socket_monitor(handle, nil, 0) }
        while (try? pair.receiveMultipart(maxParts: 2)) != nil {}
        pair.close(linger: .zero)
    }
}
