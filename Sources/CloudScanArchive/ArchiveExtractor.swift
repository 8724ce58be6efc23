import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Why an archive was refused. `reason` is short and machine-readable; `message` says what entry.
public struct ArchiveError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Reason: String, Sendable {
        /// An entry's path is absolute or climbs out with `..`.
        case pathEscape = "archive_path_escape"
        /// A symbolic or hard link points outside the extraction root.
        case linkEscape = "archive_link_escape"
        /// A device, FIFO or socket entry.
        case specialFile = "archive_special_file"
        /// Over the total size or the file-count cap.
        case tooLarge = "archive_too_large"
        case tooManyFiles = "archive_too_many_files"
        /// Expands far more than data compresses (a zip bomb).
        case compressionRatio = "archive_compression_ratio"
        /// Damaged, truncated or not an archive we read.
        case corrupt = "archive_corrupt"
        case unsupported = "archive_unsupported"
    }

    public var reason: Reason
    public var message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason.rawValue): \(message)" }
}

/// Caps on what an archive may expand to.
public struct ArchiveLimits: Sendable {
    public var maximumTotalBytes: Int
    public var maximumFiles: Int
    /// Expanded bytes per compressed byte, checked once more than `ratioFloorBytes` are out.
    public var maximumRatio: Int
    public var ratioFloorBytes: Int

    public init(
        maximumTotalBytes: Int = 1 << 30, maximumFiles: Int = 200_000, maximumRatio: Int = 100,
        ratioFloorBytes: Int = 16 << 20
    ) {
        self.maximumTotalBytes = maximumTotalBytes
        self.maximumFiles = maximumFiles
        self.maximumRatio = maximumRatio
        self.ratioFloorBytes = ratioFloorBytes
    }
}

/// Extracts tar, tar.gz and zip archives into an empty directory, refusing anything that could
/// write or point outside it: absolute paths, `..`, links that resolve outside, device files;
/// with caps on total size, file count and compression ratio.
///
/// Nothing is ever created through a path string. Every entry is made relative to a directory
/// descriptor reached from the root one component at a time with `O_DIRECTORY|O_NOFOLLOW`
/// (`mkdirat`, `openat`, `symlinkat`, `linkat`), so a symbolic link made by an earlier entry is
/// never followed while extracting: an entry "under" a link is refused, whatever the link says.
/// Once every entry is out, each link's target is resolved inside the root (links through links,
/// as the kernel would follow them later) and the archive is refused if one climbs out.
public enum ArchiveExtractor {
    public struct Summary: Sendable, Equatable {
        public var files: Int
        public var directories: Int
        public var symlinks: Int
        public var bytes: Int
    }

    public static func extract(
        archive path: String, into root: String, limits: ArchiveLimits = .init()
    ) throws -> Summary {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ArchiveError(.corrupt, "cannot open the archive")
        }
        defer { try? handle.close() }
        let head = try handle.read(upToCount: 512) ?? Data()
        try handle.seek(toOffset: 0)
        let compressedSize = Int(clamping: try handle.seekToEnd())
        try handle.seek(toOffset: 0)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let writer = try TreeWriter(root: root, limits: limits, compressedSize: compressedSize)
        let bytes = [UInt8](head)
        do {
            if bytes.count >= 2, bytes[0] == 0x1f, bytes[1] == 0x8b {
                try TarReader(source: GzipSource(handle: handle), writer: writer).read()
            } else if bytes.count >= 4,
                bytes[0..<4] == [0x50, 0x4b, 0x03, 0x04] || bytes[0..<4] == [0x50, 0x4b, 0x05, 0x06]
            {
                try ZipReader(handle: handle, size: compressedSize, writer: writer).read()
            } else if bytes.count >= 262, String(decoding: bytes[257..<262], as: UTF8.self) == "ustar" {
                try TarReader(source: PlainSource(handle: handle), writer: writer).read()
            } else {
                throw ArchiveError(.unsupported, "not a tar, tar.gz or zip archive")
            }
            try writer.finish()
        } catch {
            // A refused archive leaves no link behind: links are only checked once every entry is
            // out, and one made before the failure may point anywhere.
            writer.removeLinks()
            throw error
        }
        return writer.summary
    }

    /// An entry's path made relative and clean, or an error if it is absolute or climbs out.
    /// Worked out on UTF-8 bytes, as the kernel splits paths: a `/` followed by a combining mark is
    /// one `Character` to Swift but two components to the kernel, so no check here looks at
    /// characters. `\\` separates too (archives made on Windows).
    static func safeRelativePath(_ name: String) throws -> EntryPath? {
        let bytes = Array(name.utf8)
        guard !bytes.contains(0) else { throw ArchiveError(.pathEscape, "an entry name holds a NUL byte") }
        guard bytes.first != 0x2F, bytes.first != 0x5C, !(bytes.count >= 2 && bytes[1] == 0x3A) else {
            throw ArchiveError(.pathEscape, "entry \(quoted(name)) has an absolute path")
        }
        var parts: [[UInt8]] = []
        for part in bytes.split(whereSeparator: { $0 == 0x2F || $0 == 0x5C }) {
            if part.elementsEqual([0x2E]) { continue }
            if part.elementsEqual([0x2E, 0x2E]) {
                throw ArchiveError(.pathEscape, "entry \(quoted(name)) climbs out with ..")
            }
            guard part.count <= 255 else {
                throw ArchiveError(.corrupt, "a component of an entry's path is over 255 bytes")
            }
            parts.append(Array(part))
        }
        guard !parts.isEmpty else { return nil }
        let path = EntryPath(components: parts)
        // Below PATH_MAX with the root's own path in front: the resolver stats whole paths.
        guard path.bytes.count < 3072 else { throw ArchiveError(.corrupt, "an entry's path is over 3 KiB") }
        return path
    }

    static func quoted(_ name: String) -> String {
        "\"\(name.prefix(200).replacingOccurrences(of: "\"", with: "\\\""))\""
    }
}

// MARK: - Paths as bytes

/// A clean relative path inside the extraction root, as the kernel sees it: components of bytes
/// (no `/`, no NUL, never `.` or `..`). Compared and hashed as bytes — Swift `String` equality is
/// canonical equivalence (`é` == `e` + U+0301), which the filesystem does not share.
struct EntryPath: Hashable {
    let components: [[UInt8]]

    init(components: [[UInt8]]) { self.components = components }

    static let root = EntryPath(components: [])

    var isRoot: Bool { components.isEmpty }
    /// The components joined by `/`.
    var bytes: [UInt8] { Array(components.joined(separator: [0x2F])) }
    var parent: EntryPath { EntryPath(components: Array(components.dropLast())) }
    var name: [UInt8] { components.last ?? [] }
    /// For messages only.
    var text: String { String(decoding: bytes, as: UTF8.self) }

    func appending(_ component: [UInt8]) -> EntryPath { EntryPath(components: components + [component]) }
}

/// Runs `body` with `bytes` as a NUL-terminated C string. The bytes are always valid UTF-8 here
/// (split from a Swift string at `/`), which a `String` holds unchanged — no normalization.
func withCString<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
    String(decoding: bytes, as: UTF8.self).withCString(body)
}

// MARK: - Writing the tree

/// Writes entries under the root through directory descriptors, enforcing the caps.
final class TreeWriter {
    let limits: ArchiveLimits
    let compressedSize: Int
    private(set) var summary = ArchiveExtractor.Summary(files: 0, directories: 0, symlinks: 0, bytes: 0)
    private let rootFD: Int32
    private enum Kind { case file, directory, symlink }
    /// What this archive made at each path (directories made implicitly included).
    private var kinds: [EntryPath: Kind] = [:]
    private var links: [(path: EntryPath, target: [UInt8])] = []
    /// Open descriptors of directories under the root; trimmed between entries.
    private var directoryFDs: [EntryPath: Int32] = [:]
    /// Components the link resolver may still visit (against archives built to make it slow).
    private var resolverBudget = 4_000_000

    init(root: String, limits: ArchiveLimits, compressedSize: Int) throws {
        self.limits = limits
        self.compressedSize = max(compressedSize, 1)
        rootFD = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard rootFD >= 0 else { throw ArchiveError(.corrupt, "the extraction root cannot be opened") }
    }

    deinit {
        for fd in directoryFDs.values { close(fd) }
        close(rootFD)
    }

    private func countEntry() throws {
        if summary.files + summary.directories + summary.symlinks >= limits.maximumFiles {
            throw ArchiveError(.tooManyFiles, "more than \(limits.maximumFiles) entries")
        }
        // Between entries no descriptor is in use: keep the cache small.
        if directoryFDs.count > 64 {
            for fd in directoryFDs.values { close(fd) }
            directoryFDs.removeAll()
        }
    }

    /// Accounts for `count` more expanded bytes, checking the size cap and the ratio.
    func account(_ count: Int) throws {
        summary.bytes += count
        if summary.bytes > limits.maximumTotalBytes {
            throw ArchiveError(.tooLarge, "expands past \(limits.maximumTotalBytes) bytes")
        }
        if summary.bytes > limits.ratioFloorBytes && summary.bytes / compressedSize > limits.maximumRatio {
            throw ArchiveError(
                .compressionRatio,
                "expands more than \(limits.maximumRatio)× its compressed size (\(compressedSize) bytes)")
        }
    }

    /// The descriptor of a directory under the root, walked one component at a time without
    /// following any link (each `openat` names a single component, so there is no path in which
    /// the kernel could meet a link); with `create`, missing directories are made.
    private func directoryFD(_ path: EntryPath, create: Bool) throws -> Int32 {
        if path.isRoot { return rootFD }
        if let fd = directoryFDs[path] { return fd }
        var parentFD = rootFD
        var current = EntryPath.root
        for component in path.components {
            current = current.appending(component)
            if let cached = directoryFDs[current] {
                parentFD = cached
                continue
            }
            if create && kinds[current] == nil {
                if withCString(component, { mkdirat(parentFD, $0, 0o755) }) == 0 {
                    kinds[current] = .directory
                    summary.directories += 1
                } else if errno != EEXIST {
                    throw ArchiveError(
                        .corrupt, "cannot create \(ArchiveExtractor.quoted(current.text)): \(errnoText())")
                }
            }
            let fd = withCString(component) { openat(parentFD, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else {
                let failure = errno
                if kinds[current] == .symlink || failure == ELOOP {
                    throw ArchiveError(
                        .linkEscape,
                        "\(ArchiveExtractor.quoted(path.text)) passes through the symbolic link \(ArchiveExtractor.quoted(current.text))"
                    )
                }
                if kinds[current] == .file || failure == ENOTDIR {
                    throw ArchiveError(
                        .corrupt, "\(ArchiveExtractor.quoted(current.text)) is both a file and a directory")
                }
                throw ArchiveError(.corrupt, "cannot open \(ArchiveExtractor.quoted(current.text)): \(errnoText())")
            }
            directoryFDs[current] = fd
            parentFD = fd
        }
        return parentFD
    }

    func directory(_ path: EntryPath) throws {
        try countEntry()
        if kinds[path] == .file || kinds[path] == .symlink {
            throw ArchiveError(
                .corrupt, "\(ArchiveExtractor.quoted(path.text)) is both a directory and a file or link")
        }
        _ = try directoryFD(path, create: true)
    }

    /// Makes room for an entry at `path`: its parent directories exist, and an earlier regular
    /// file of the same name is replaced. Returns the parent's descriptor.
    private func place(_ path: EntryPath, as what: String) throws -> Int32 {
        let parent = try directoryFD(path.parent, create: true)
        switch kinds[path] {
        case .directory?:
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(path.text)) is both a directory and \(what)")
        case .symlink?:
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(path.text)) is both a symbolic link and \(what)")
        case .file?:
            _ = withCString(path.name) { unlinkat(parent, $0, 0) }
            summary.files -= 1
        case nil:
            break
        }
        return parent
    }

    /// Opens a regular file for writing (replacing an earlier file entry of the same name).
    func beginFile(_ path: EntryPath, executable: Bool) throws -> Int32 {
        try countEntry()
        let parent = try place(path, as: "a file")
        let fd = withCString(path.name) {
            openat(parent, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, executable ? 0o755 : 0o644)
        }
        guard fd >= 0 else {
            throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(path.text)): \(errnoText())")
        }
        kinds[path] = .file
        summary.files += 1
        return fd
    }

    func write(_ fd: Int32, _ bytes: [UInt8]) throws {
        try account(bytes.count)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw ArchiveError(.corrupt, "write failed: \(errnoText())")
            }
            offset += written
        }
    }

    /// A hard link to a regular file this archive already wrote: `linkat`, no second copy.
    func hardLink(_ path: EntryPath, target: String) throws {
        try countEntry()
        guard let targetPath = try? ArchiveExtractor.safeRelativePath(target), kinds[targetPath] == .file,
            targetPath != path
        else {
            throw ArchiveError(
                .linkEscape,
                "hard link \(ArchiveExtractor.quoted(path.text)) points at \(ArchiveExtractor.quoted(target)), not a file of this archive"
            )
        }
        let targetParent = try directoryFD(targetPath.parent, create: false)
        let parent = try place(path, as: "a hard link")
        let linked = withCString(targetPath.name) { from in
            withCString(path.name) { to in linkat(targetParent, from, parent, to, 0) }
        }
        guard linked == 0 else {
            throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(path.text)): \(errnoText())")
        }
        kinds[path] = .file
        summary.files += 1
    }

    /// A symbolic link, made at once: no later entry is ever created through it.
    func symlink(_ path: EntryPath, target: String) throws {
        try countEntry()
        let escape = ArchiveError(
            .linkEscape,
            "symbolic link \(ArchiveExtractor.quoted(path.text)) points at \(ArchiveExtractor.quoted(target)), outside the archive"
        )
        let bytes = Array(target.utf8)
        guard !bytes.isEmpty, bytes.first != 0x2F, !bytes.contains(0), bytes.count <= 4096 else { throw escape }
        // Lexically first (on bytes, as the kernel splits): the link's directory joined with the
        // target must stay inside.
        var depth = path.components.count - 1
        for part in bytes.split(separator: 0x2F) where !part.elementsEqual([0x2E]) {
            depth += part.elementsEqual([0x2E, 0x2E]) ? -1 : 1
            if depth < 0 { throw escape }
        }
        let parent = try place(path, as: "a symbolic link")
        let made = withCString(bytes) { target in withCString(path.name) { symlinkat(target, parent, $0) } }
        guard made == 0 else {
            throw ArchiveError(.corrupt, "cannot create link \(ArchiveExtractor.quoted(path.text)): \(errnoText())")
        }
        kinds[path] = .symlink
        links.append((path, bytes))
        summary.symlinks += 1
    }

    /// Removes every symbolic link this archive made (a refused archive's).
    func removeLinks() {
        for (link, _) in links {
            if let parent = try? directoryFD(link.parent, create: false) {
                _ = withCString(link.name) { unlinkat(parent, $0, 0) }
            }
        }
        links.removeAll()
    }

    /// Checks where each link really resolves, following links through links inside the root;
    /// on an escape the archive is refused (and ``removeLinks()`` removes them all).
    func finish() throws {
        for (path, target) in links {
            switch resolve(path) {
            case .inside: continue
            case .outside, .loop:
                throw ArchiveError(
                    .linkEscape,
                    "symbolic link \(ArchiveExtractor.quoted(path.text)) → \(ArchiveExtractor.quoted(String(decoding: target, as: UTF8.self))) resolves outside the archive"
                )
            }
        }
    }

    enum Resolution { case inside, outside, loop }

    /// Resolves the link at `path` the way the kernel would, but beneath the root: a `..` above the
    /// root or an absolute target is `outside`. A missing component stays lexical (the kernel stops
    /// there); any other failure to look (a name too long, …) counts as `outside`.
    func resolve(_ path: EntryPath) -> Resolution {
        var stack = path.parent.components
        var pending = [path.name]
        var hops = 0
        while let part = pending.popLast() {
            resolverBudget -= 1
            if resolverBudget < 0 { return .loop }
            if part.isEmpty || part.elementsEqual([0x2E]) { continue }
            if part.elementsEqual([0x2E, 0x2E]) {
                if stack.isEmpty { return .outside }
                stack.removeLast()
                continue
            }
            let candidate = EntryPath(components: stack + [part]).bytes
            var info = stat()
            if withCString(candidate, { fstatat(rootFD, $0, &info, AT_SYMLINK_NOFOLLOW) }) != 0 {
                guard errno == ENOENT || errno == ENOTDIR else { return .outside }
                stack.append(part)
                continue
            }
            guard info.st_mode & S_IFMT == S_IFLNK else {
                stack.append(part)
                continue
            }
            hops += 1
            if hops > 40 { return .loop }
            var buffer = [UInt8](repeating: 0, count: 4097)
            let count = withCString(candidate) { name in
                buffer.withUnsafeMutableBufferPointer { out in
                    out.withMemoryRebound(to: CChar.self) { chars in
                        guard let base = chars.baseAddress else { return -1 }
                        return readlinkat(rootFD, name, base, 4096)
                    }
                }
            }
            guard count > 0, count <= 4096 else { return .outside }
            let target = Array(buffer[0..<count])
            if target.first == 0x2F { return .outside }
            pending.append(contentsOf: target.split(separator: 0x2F).map { Array($0) }.reversed())
        }
        return .inside
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
