internal import Glibc

/// A failed system call: its name and errno, kept so callers can word an error for a person.
struct SystemError: Error {
    let call: String
    let errno: Int32

    var reason: String { String(cString: strerror(errno)) }
}

/// Runs an errno-returning system call: retries `EINTR`, throws the errno with the call's name.
/// Every file operation in this module goes through here, so none forgets the retry.
@discardableResult
func systemCall<T: FixedWidthInteger>(_ call: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemError(call: call, errno: code)
    }
}
