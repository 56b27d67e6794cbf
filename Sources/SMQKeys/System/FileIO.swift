internal import Glibc
internal import CSodium

/// The few file operations certificates need, on file descriptors so that what is checked (type,
/// mode) is what is read, with no window between a `stat` and an `open`.
enum FileIO {
    static let typeMask: UInt32 = 0o170000
    static let regularType: UInt32 = 0o100000
    static let directoryType: UInt32 = 0o040000

    /// A file's bytes and its permission bits, as seen through one open descriptor.
    struct Contents {
        var bytes: [UInt8]
        /// The permission bits (`st_mode & 0o7777`).
        let permissions: UInt32
    }

    /// Certificate files are a few hundred bytes; anything far larger is not one.
    static let maximumCertificateSize = 64 * 1024

    /// Reads a whole regular file of at most `limit` bytes.
    static func read(path: String, limit: Int = maximumCertificateSize) throws(CertificateError) -> Contents {
        let fd: Int32
        do {
            // O_NONBLOCK: a FIFO dropped into a certificate directory must not hang the reader;
            // it is refused by the fstat check below. (No effect on regular files.)
            fd = try systemCall("open") { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        } catch {
            throw error.certificateError(path: path, doing: "cannot open")
        }
        defer { _ = close(fd) }
        var info = stat()
        do {
            try systemCall("fstat") { fstat(fd, &info) }
        } catch {
            throw error.certificateError(path: path, doing: "cannot stat")
        }
        let mode = UInt32(info.st_mode)
        guard mode & typeMask == regularType else {
            let what = mode & typeMask == directoryType ? "a directory" : "not a regular file"
            throw CertificateError(.io, path: path, "is \(what), not a certificate file")
        }
        guard Int(info.st_size) <= limit else {
            throw CertificateError(.syntax, path: path, "is \(info.st_size) bytes: too large for a certificate (at most \(limit))")
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity(Int(info.st_size))
        var chunk = [UInt8](repeating: 0, count: 4096)
        defer { wipe(&chunk) }
        while true {
            let count: Int
            do {
                count = try systemCall("read") {
                    chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                }
            } catch {
                wipe(&bytes)
                throw error.certificateError(path: path, doing: "cannot read")
            }
            if count == 0 { break }
            guard bytes.count + count <= limit else {
                wipe(&bytes)
                throw CertificateError(.syntax, path: path, "is too large for a certificate (at most \(limit) bytes)")
            }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return Contents(bytes: bytes, permissions: mode & 0o7777)
    }

    /// The type and permission bits of `path`, following symbolic links; nil if it does not exist.
    static func mode(of path: String) throws(CertificateError) -> UInt32? {
        var info = stat()
        do {
            try systemCall("stat") { stat(path, &info) }
        } catch {
            if error.errno == ENOENT { return nil }
            throw error.certificateError(path: path, doing: "cannot stat")
        }
        return UInt32(info.st_mode)
    }

    /// Whether `path` itself is a symbolic link (whether or not its target exists).
    static func isSymbolicLink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && UInt32(info.st_mode) & typeMask == 0o120000
    }

    /// The names in a directory (without `.` and `..`), unsorted.
    static func list(directory: String) throws(CertificateError) -> [String] {
        guard let dir = opendir(directory) else {
            throw SystemError(call: "opendir", errno: errno).certificateError(path: directory, doing: "cannot read directory")
        }
        defer { closedir(dir) }
        var names = [String]()
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 {
                    throw SystemError(call: "readdir", errno: errno).certificateError(path: directory, doing: "cannot read directory")
                }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Writes `bytes` to `path` with exactly `permissions`, atomically: readers see the old file or
    /// the whole new one, never a part. The data goes to a fresh temporary file in the same
    /// directory (created with `O_EXCL`, mode 0600 from the start), is synced, and then either
    /// replaces `path` (`rename`, when `overwrite`) or is linked to it (`link`, which fails if
    /// `path` exists: no check-then-write race).
    static func writeAtomically(_ bytes: [UInt8], to path: String, permissions: UInt32, overwrite: Bool) throws(CertificateError) {
        let directory = parentDirectory(of: path)
        let (tempPath, fd) = try createTemporaryFile(near: path)
        var linked = false
        defer { if !linked { _ = unlink(tempPath) } }
        do {
            defer { _ = close(fd) }
            try writeAll(bytes, to: fd, path: path)
            do {
                try systemCall("fchmod") { fchmod(fd, mode_t(permissions)) }
                try systemCall("fsync") { fsync(fd) }
            } catch {
                throw error.certificateError(path: path, doing: "cannot write")
            }
        }
        if overwrite {
            do {
                try systemCall("rename") { rename(tempPath, path) }
            } catch {
                throw error.certificateError(path: path, doing: "cannot write")
            }
            linked = true
        } else {
            do {
                try systemCall("link") { link(tempPath, path) }
            } catch where error.errno == EEXIST {
                throw CertificateError(.alreadyExists, path: path, "already exists; pass overwrite (keygen --force) to replace it")
            } catch where [EPERM, EOPNOTSUPP, EXDEV, EMLINK, ENOSYS].contains(error.errno) {
                // A file system without hard links: O_EXCL on the final name still refuses to overwrite.
                try writeExclusively(bytes, to: path, permissions: permissions)
            } catch {
                throw error.certificateError(path: path, doing: "cannot write")
            }
        }
        syncDirectory(directory)
    }

    private static func writeExclusively(_ bytes: [UInt8], to path: String, permissions: UInt32) throws(CertificateError) {
        let fd: Int32
        do {
            fd = try systemCall("open") { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(0o600)) }
        } catch where error.errno == EEXIST {
            throw CertificateError(.alreadyExists, path: path, "already exists; pass overwrite (keygen --force) to replace it")
        } catch {
            throw error.certificateError(path: path, doing: "cannot create")
        }
        defer { _ = close(fd) }
        do {
            try writeAll(bytes, to: fd, path: path)
        } catch {
            _ = unlink(path)
            throw error
        }
        do {
            try systemCall("fchmod") { fchmod(fd, mode_t(permissions)) }
            try systemCall("fsync") { fsync(fd) }
        } catch {
            _ = unlink(path)
            throw error.certificateError(path: path, doing: "cannot write")
        }
    }

    private static func createTemporaryFile(near path: String) throws(CertificateError) -> (String, Int32) {
        let directory = parentDirectory(of: path)
        let base = path.split(separator: "/").last.map(String.init) ?? "certificate"
        // A leading dot keeps the allowlist scanner away from half-written files.
        for _ in 0..<16 {
            var random = [UInt8](repeating: 0, count: 6)
            ensureSodium()
            randombytes_buf(&random, random.count)
            let suffix = random.map { String($0, radix: 16) }.joined()
            let tempPath = directory + "/." + base + ".tmp-" + suffix
            do {
                let fd = try systemCall("open") { open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(0o600)) }
                return (tempPath, fd)
            } catch where error.errno == EEXIST {
                continue
            } catch {
                throw error.certificateError(path: path, doing: "cannot create a file next to")
            }
        }
        throw CertificateError(.io, path: path, "cannot create a temporary file next to it")
    }

    private static func writeAll(_ bytes: [UInt8], to fd: Int32, path: String) throws(CertificateError) {
        var offset = 0
        while offset < bytes.count {
            do {
                let written = try systemCall("write") {
                    bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                }
                offset += written
            } catch {
                throw error.certificateError(path: path, doing: "cannot write")
            }
        }
    }

    /// Makes a rename or link durable; best effort (some file systems refuse fsync on directories).
    private static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        _ = close(fd)
    }

    static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = path[..<slash]
        return parent.isEmpty ? "/" : String(parent)
    }

    /// Overwrites a buffer that held secret material.
    static func wipe(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
    }

    /// The BLAKE2b-256 digest of `bytes`: what the allowlist remembers of each file, so it can
    /// notice any change of content without keeping the content.
    static func digest(_ bytes: [UInt8]) -> [UInt8] {
        ensureSodium()
        var out = [UInt8](repeating: 0, count: 32)
        _ = crypto_generichash(&out, out.count, bytes, UInt64(bytes.count), nil, 0)
        return out
    }
}

extension SystemError {
    /// Words the failure for a person: `path: cannot open: Permission denied`.
    func certificateError(path: String, doing: String) -> CertificateError {
        switch errno {
        case ENOENT: CertificateError(.notFound, path: path, "does not exist")
        case EACCES: CertificateError(.io, path: path, "\(doing): permission denied")
        default: CertificateError(.io, path: path, "\(doing): \(reason) (\(call))")
        }
    }
}

extension FileIO {
    /// Removes a file, ignoring failure (used to roll back a half-written certificate).
    static func remove(_ path: String) { _ = unlink(path) }
}
