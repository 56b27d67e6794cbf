import Glibc

/// Reads a payload's bytes straight into outgoing message buffers: from memory, or from a file
/// with `pread` (random access, so a fragment can be read again for a resend after a broker
/// restart without the client holding the whole payload).
final class PayloadReader {
    private enum Storage {
        case bytes([UInt8])
        case file(fd: Int32, path: String)
    }

    private let storage: Storage
    let length: Int

    init(_ payload: Payload) throws(SecureMQError) {
        switch payload.source {
        case .bytes(let bytes):
            storage = .bytes(bytes)
            length = bytes.count
        case .file(let name):
            let fd = open(name, O_RDONLY | O_CLOEXEC)
            // File names reach error messages and terminals: one printable line, whatever the name.
            let path = PeerText.escaped(name)
            guard fd >= 0 else {
                let err = errno
                throw SecureMQError(.invalidConfiguration, "cannot open \(path): \(String(cString: strerror(err)))", errno: err, call: "open")
            }
            var info = stat()
            guard fstat(fd, &info) == 0 else {
                let err = errno
                close(fd)
                throw SecureMQError(.invalidConfiguration, "cannot stat \(path): \(String(cString: strerror(err)))", errno: err, call: "fstat")
            }
            guard (info.st_mode & S_IFMT) == S_IFREG else {
                close(fd)
                throw SecureMQError(.invalidConfiguration, "\(path) is not a regular file (pipe stdin to a temporary file first)")
            }
            storage = .file(fd: fd, path: path)
            length = Int(info.st_size)
        }
    }

    deinit {
        if case .file(let fd, _) = storage { close(fd) }
    }

    /// Copies `destination.count` bytes from `offset` into `destination`.
    /// - Throws: ``SecureMQError`` `.integrity` when a file got shorter while the job ran.
    func read(at offset: Int, into destination: UnsafeMutableRawBufferPointer) throws(SecureMQError) {
        switch storage {
        case .bytes(let bytes):
            bytes.withUnsafeBytes { source in
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + destination.count]))
            }
        case .file(let fd, let path):
            var done = 0
            while done < destination.count {
                let n = pread(fd, destination.baseAddress! + done, destination.count - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw SecureMQError(.integrity, n == 0
                        ? "\(path) got shorter while it was being sent (\(offset + done) of \(length) bytes read)"
                        : "reading \(path) failed: \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
    }
}
