internal import Glibc

/// A payload read from a file as a stream, never loaded whole.
///
/// Its length is taken with `fstat` when it is opened, because a job's fragment count is fixed by
/// its first SUBMIT. Only regular files qualify: a pipe or terminal (such as stdin of unknown
/// length) has no length upfront, so the caller spools it to a temporary file (or buffers it)
/// first. The ``Fragmenter`` notices a file that shrinks or grows while it is read and fails
/// instead of producing a short or wrong-sized job.
public struct PayloadFile: ~Copyable {
    /// The open descriptor; closed when the value is destroyed.
    public let fileDescriptor: Int32
    /// The file's length when it was opened.
    public let size: UInt64
    /// The path, for error messages (nil when adopted from a descriptor).
    public let path: String?

    /// Opens a file for reading.
    ///
    /// - Parameter path: The file.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/openFailed`` or
    ///   ``PipelineError/Code/notRegularFile``.
    public init(path: String) throws(PipelineError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PipelineError(.openFailed, errno: Glibc.errno, path: path) }
        do {
            size = try Self.regularFileSize(fd, path: path)
        } catch {
            close(fd)
            throw error
        }
        fileDescriptor = fd
        self.path = path
    }

    /// Takes ownership of an open descriptor (e.g. stdin redirected from a file); it is closed when
    /// the value is destroyed, or also when this throws.
    ///
    /// - Parameter fileDescriptor: A descriptor open for reading, positioned at the payload's
    ///   start (the length is counted from the current position).
    /// - Throws: ``PipelineError`` ``PipelineError/Code/notRegularFile`` when it is not a
    ///   regular file (a pipe, a terminal).
    public init(adopting fileDescriptor: Int32) throws(PipelineError) {
        do {
            let total = try Self.regularFileSize(fileDescriptor, path: nil)
            let position = lseek(fileDescriptor, 0, SEEK_CUR)
            size = position > 0 ? total - min(total, UInt64(position)) : total
        } catch {
            close(fileDescriptor)
            throw error
        }
        self.fileDescriptor = fileDescriptor
        self.path = nil
    }

    deinit {
        close(fileDescriptor)
    }

    /// Reads up to `buffer.count` bytes at the current position; retries `EINTR`.
    ///
    /// - Parameter buffer: The destination.
    /// - Returns: The bytes read; 0 at the end of the file.
    /// - Throws: ``PipelineError`` ``PipelineError/Code/readFailed`` with the errno.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(PipelineError) -> Int {
        try Self.read(fileDescriptor, into: buffer, path: path)
    }

    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String?) throws(PipelineError) -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if Glibc.errno == EINTR { continue }
            throw PipelineError(.readFailed, errno: Glibc.errno, path: path)
        }
    }

    private static func regularFileSize(_ fd: Int32, path: String?) throws(PipelineError) -> UInt64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw PipelineError(.openFailed, errno: Glibc.errno, path: path) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw PipelineError(.notRegularFile, path: path) }
        return UInt64(info.st_size)
    }
}
