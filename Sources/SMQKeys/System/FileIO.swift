internal import Glibc
internal import CSodium

/// The few file operations certificates need, on file descriptors so that what is checked (type,
/// mode) is what is read, with no window between a `stat` and an `open`.
enum FileIO {
    static let typeMask: UInt32 = 0o170000
    static let regularType: UInt32 = 0o100000
    static let directoryType: UInt32 = 0o040000

    /// What `fstat`/`lstat` said of a file: its type, permission bits and owner.
    struct FileInfo: Sendable {
        let mode: UInt32
        let owner: UInt32

        /// The permission bits (`st_mode & 0o7777`).
        var permissions: UInt32 { mode & 0o7777 }
        var isRegular: Bool { mode & FileIO.typeMask == FileIO.regularType }
        var isDirectory: Bool { mode & FileIO.typeMask == FileIO.directoryType }
        var isSymbolicLink: Bool { mode & FileIO.typeMask == FileIO.symbolicLinkType }

        init(_ info: stat) {
            mode = UInt32(info.st_mode)
            owner = UInt32(info.st_uid)
        }
    }

    static let symbolicLinkType: UInt32 = 0o120000

    /// The process's effective user id: the one owner besides root an allowlist file may have.
    static var effectiveUserID: UInt32 { UInt32(geteuid()) }

    /// A file's bytes, and its type, mode and owner as seen through the descriptor they were read from.
    struct Contents {
        var bytes: [UInt8]
        let info: FileInfo
        /// The permission bits (`st_mode & 0o7777`).
        var permissions: UInt32 { info.permissions }
    }

    /// Certificate files are a few hundred bytes; anything far larger is not one.
    static let maximumCertificateSize = 64 * 1024

    /// Reads a whole regular file of at most `limit` bytes.
    ///
    /// - Parameters:
    ///   - path: the file, or (with `directory`) its name in that directory; also the name errors use.
    ///   - directory: an open directory descriptor `path` is relative to (`openat`), so what is
    ///     read is the entry of the directory that was checked, whatever renames happen meanwhile.
    ///   - followSymbolicLinks: false opens with `O_NOFOLLOW`: a symbolic link is refused.
    ///   - accept: checks the opened file's type, mode and owner before a byte is read.
    static func read(
        path: String, in directory: Int32 = AT_FDCWD, displayPath: String? = nil, followSymbolicLinks: Bool = true,
        limit: Int = maximumCertificateSize, accept: (FileInfo) throws(CertificateError) -> Void = { _ in }
    ) throws(CertificateError) -> Contents {
        let shownPath = displayPath ?? path
        let fd: Int32
        do {
            // O_NONBLOCK: a FIFO dropped into a certificate directory must not hang the reader;
            // it is refused by the fstat check below. (No effect on regular files.)
            let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (followSymbolicLinks ? 0 : O_NOFOLLOW)
            fd = try systemCall("open") { openat(directory, path, flags) }
        } catch {
            if error.errno == ELOOP && !followSymbolicLinks {
                throw CertificateError(.symbolicLink, path: shownPath, "is a symbolic link: allowlist files must be regular files (copy the certificate in instead of linking it)")
            }
            throw error.certificateError(path: shownPath, doing: "cannot open")
        }
        defer { _ = close(fd) }
        var status = stat()
        do {
            try systemCall("fstat") { fstat(fd, &status) }
        } catch {
            throw error.certificateError(path: shownPath, doing: "cannot stat")
        }
        let info = FileInfo(status)
        guard info.isRegular else {
            let what = info.isDirectory ? "a directory" : "not a regular file"
            throw CertificateError(.io, path: shownPath, "is \(what), not a certificate file")
        }
        try accept(info)
        guard Int(status.st_size) <= limit else {
            throw CertificateError(.syntax, path: shownPath, "is \(status.st_size) bytes: too large for a certificate (at most \(limit))")
        }
        // One buffer of the announced size plus one byte (to notice growth); if the file grew, a
        // larger buffer replaces it and the old one is wiped first: no copy of a secret file's
        // bytes is left behind in freed memory.
        var bytes = [UInt8]()
        bytes.reserveCapacity(Int(status.st_size) + 1)
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
                throw error.certificateError(path: shownPath, doing: "cannot read")
            }
            if count == 0 { break }
            guard bytes.count + count <= limit else {
                wipe(&bytes)
                throw CertificateError(.syntax, path: shownPath, "is too large for a certificate (at most \(limit) bytes)")
            }
            appendWiping(chunk[0..<count], to: &bytes)
        }
        return Contents(bytes: bytes, info: info)
    }

    /// Appends without letting the array reallocate behind our back: when it is full, the bytes
    /// move to a larger buffer and the old one is wiped before it is freed.
    static func appendWiping(_ more: ArraySlice<UInt8>, to bytes: inout [UInt8]) {
        if bytes.count + more.count > bytes.capacity {
            var larger = [UInt8]()
            larger.reserveCapacity(max(bytes.capacity * 2, bytes.count + more.count))
            larger.append(contentsOf: bytes)
            wipe(&bytes)
            bytes = larger
        }
        bytes.append(contentsOf: more)
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

    /// What `name` in an open directory is, without following a symbolic link (`fstatat` with
    /// `AT_SYMLINK_NOFOLLOW`); nil if it no longer exists.
    static func linkInfo(of name: String, in directory: Int32, displayPath: String) throws(CertificateError) -> FileInfo? {
        var info = stat()
        do {
            try systemCall("fstatat") { fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) }
        } catch {
            if error.errno == ENOENT { return nil }
            throw error.certificateError(path: displayPath, doing: "cannot stat")
        }
        return FileInfo(info)
    }

    /// Opens a directory for listing and `openat` (the path itself may be a symbolic link: it is
    /// the operator's own argument).
    static func openDirectory(_ path: String) throws(CertificateError) -> Int32 {
        do {
            return try systemCall("open") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        } catch {
            if error.errno == ENOTDIR { throw CertificateError(.io, path: path, "is not a directory") }
            throw error.certificateError(path: path, doing: "cannot read directory")
        }
    }

    /// The type, mode and owner of an open descriptor.
    static func info(of fd: Int32, path: String) throws(CertificateError) -> FileInfo {
        var info = stat()
        do {
            try systemCall("fstat") { fstat(fd, &info) }
        } catch {
            throw error.certificateError(path: path, doing: "cannot stat")
        }
        return FileInfo(info)
    }

    static func closeDescriptor(_ fd: Int32) { _ = Glibc.close(fd) }

    /// The names in an open directory (without `.` and `..`), unsorted. The descriptor stays open
    /// and owned by the caller.
    static func list(directory fd: Int32, path: String) throws(CertificateError) -> [String] {
        let copy: Int32
        do {
            copy = try systemCall("dup") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        } catch {
            throw error.certificateError(path: path, doing: "cannot read directory")
        }
        guard let dir = fdopendir(copy) else {
            let error = SystemError(call: "fdopendir", errno: errno)
            _ = Glibc.close(copy)
            throw error.certificateError(path: path, doing: "cannot read directory")
        }
        defer { closedir(dir) }
        return try names(in: dir, path: path)
    }

    private static func names(in dir: OpaquePointer, path: String) throws(CertificateError) -> [String] {
        var names = [String]()
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 {
                    throw SystemError(call: "readdir", errno: errno).certificateError(path: path, doing: "cannot read directory")
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
