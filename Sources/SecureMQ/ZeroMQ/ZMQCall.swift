internal import CZeroMQ
import Glibc

/// The outcome of a libzmq call that may "would block".
enum IOResult<Value> {
    case done(Value)
    case wouldBlock
}

/// Every errno-returning libzmq call goes through here: `EINTR` is retried, `EAGAIN` comes back
/// as `.wouldBlock`, anything else throws an error that names the call and carries the errno.
@inline(__always)
func zmqCall(_ name: StaticString, _ body: () -> Int32) throws(SecureMQError) -> IOResult<Int32> {
    while true {
        let rc = body()
        if rc >= 0 { return .done(rc) }
        let err = zmq_errno()
        switch err {
        case EINTR: continue
        case EAGAIN: return .wouldBlock
        default: throw SecureMQError.system(name, err)
        }
    }
}

/// A libzmq call that must not "would block" (options, bind, connect).
@inline(__always)
@discardableResult
func zmqCheck(_ name: StaticString, _ body: () -> Int32) throws(SecureMQError) -> Int32 {
    switch try zmqCall(name, body) {
    case .done(let rc): return rc
    case .wouldBlock: throw SecureMQError.system(name, EAGAIN)
    }
}

extension SecureMQError {
    static func system(_ call: StaticString, _ err: Int32) -> SecureMQError {
        let text = String(cString: zmq_strerror(err))
        if err == ETERM {
            return SecureMQError(.closed, "the ZeroMQ context was terminated (\(call))", errno: err, call: "\(call)")
        }
        return SecureMQError(.system, "\(call) failed: \(text) (errno \(err))", errno: err, call: "\(call)")
    }
}
