import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Zip entries (stored or deflated) by their central directory → the tree writer.
struct ZipReader {
    let handle: FileHandle
    let size: Int
    let writer: TreeWriter

    struct Entry {
        var name: String
        var method: UInt16
        var flags: UInt16
        var crc: UInt32
        var compressedSize: Int
        var uncompressedSize: Int
        var localHeaderOffset: Int
        var unixMode: UInt32?
    }

    func read() throws {
        let entries = try centralDirectory()
        let declared = entries.reduce(0) { $0 + $1.uncompressedSize }
        if declared > writer.limits.maximumTotalBytes {
            throw ArchiveError(
                .tooLarge, "its entries declare \(declared) bytes, over \(writer.limits.maximumTotalBytes)")
        }
        if entries.count > writer.limits.maximumFiles {
            throw ArchiveError(.tooManyFiles, "\(entries.count) entries, over \(writer.limits.maximumFiles)")
        }
        for entry in entries {
            if entry.uncompressedSize > writer.limits.ratioFloorBytes / 16,
                entry.uncompressedSize / max(entry.compressedSize, 1) > writer.limits.maximumRatio
            {
                throw ArchiveError(
                    .compressionRatio,
                    "entry \(ArchiveExtractor.quoted(entry.name)) expands \(entry.compressedSize) bytes to \(entry.uncompressedSize)"
                )
            }
        }
        for entry in entries { try extract(entry) }
    }

    private func extract(_ entry: Entry) throws {
        guard entry.flags & 1 == 0 else {
            throw ArchiveError(.unsupported, "entry \(ArchiveExtractor.quoted(entry.name)) is encrypted")
        }
        let relative = try ArchiveExtractor.safeRelativePath(entry.name)
        let fileType = (entry.unixMode ?? 0) & 0o170000
        if entry.name.hasSuffix("/") || fileType == 0o040000 {
            if let relative { try writer.directory(relative) }
            return
        }
        switch fileType {
        case 0, 0o100000, 0o120000: break
        default:
            throw ArchiveError(
                .specialFile, "entry \(ArchiveExtractor.quoted(entry.name)) is a device, FIFO or socket")
        }
        guard let relative else { throw ArchiveError(.pathEscape, "an entry names the root") }
        if fileType == 0o120000 {
            guard entry.uncompressedSize <= 4096 else {
                throw ArchiveError(.corrupt, "a link target is over 4096 bytes")
            }
            let data = try entryData(entry)
            try writer.symlink(relative, target: String(decoding: data, as: UTF8.self))
            return
        }
        let fd = try writer.beginFile(relative, executable: (entry.unixMode ?? 0) & 0o111 != 0)
        defer { close(fd) }
        try streamEntry(entry) { try writer.write(fd, $0) }
    }

    /// A small entry's bytes (link targets).
    private func entryData(_ entry: Entry) throws -> [UInt8] {
        var out: [UInt8] = []
        if (entry.unixMode ?? 0) & 0o170000 == 0o120000 {
            try streamEntry(entry) { out.append(contentsOf: $0) }
        }
        return out
    }

    private func streamEntry(_ entry: Entry, sink: @escaping ([UInt8]) throws -> Void) throws {
        let local = try bytes(at: entry.localHeaderOffset, count: 30)
        guard le32(local, 0) == 0x0403_4b50 else {
            throw ArchiveError(.corrupt, "entry \(ArchiveExtractor.quoted(entry.name)) has no local header")
        }
        let dataOffset = entry.localHeaderOffset + 30 + Int(le16(local, 26)) + Int(le16(local, 28))
        guard dataOffset + entry.compressedSize <= size else {
            throw ArchiveError(.corrupt, "entry \(ArchiveExtractor.quoted(entry.name)) runs past the end")
        }
        try handle.seek(toOffset: UInt64(dataOffset))
        var remaining = entry.compressedSize
        var produced = 0
        var crc: UInt32 = 0
        let inflater: Inflater?
        switch entry.method {
        case 0: inflater = nil
        case 8: inflater = try Inflater(.raw)
        default:
            throw ArchiveError(
                .unsupported, "entry \(ArchiveExtractor.quoted(entry.name)) uses compression method \(entry.method)")
        }
        let emit: ([UInt8]) throws -> Void = { chunk in
            produced += chunk.count
            // Never trust the declared size: stop at it.
            guard produced <= entry.uncompressedSize else {
                throw ArchiveError(
                    .compressionRatio,
                    "entry \(ArchiveExtractor.quoted(entry.name)) expands past its declared \(entry.uncompressedSize) bytes"
                )
            }
            crc = crc32Update(crc, chunk)
            try sink(chunk)
        }
        while remaining > 0 {
            guard let data = try handle.read(upToCount: min(remaining, 256 * 1024)), !data.isEmpty else {
                throw ArchiveError(.corrupt, "entry \(ArchiveExtractor.quoted(entry.name)) is truncated")
            }
            remaining -= data.count
            if let inflater {
                try inflater.inflate([UInt8](data), sink: emit)
            } else {
                try emit([UInt8](data))
            }
        }
        guard produced == entry.uncompressedSize, crc == entry.crc else {
            throw ArchiveError(.corrupt, "entry \(ArchiveExtractor.quoted(entry.name)) fails its size or CRC check")
        }
    }

    private func centralDirectory() throws -> [Entry] {
        let tailSize = min(size, 65_557)
        let tail = try bytes(at: size - tailSize, count: tailSize)
        guard tail.count >= 22 else { throw ArchiveError(.corrupt, "too short for a zip archive") }
        var eocd: Int?
        var index = tail.count - 22
        while index >= 0 {
            if le32(tail, index) == 0x0605_4b50 {
                eocd = index
                break
            }
            index -= 1
        }
        guard let eocd else { throw ArchiveError(.corrupt, "no zip end-of-central-directory record") }
        let count = Int(le16(tail, eocd + 10))
        let directorySize = Int(le32(tail, eocd + 12))
        let directoryOffset = Int(le32(tail, eocd + 16))
        if count == 0xffff || directoryOffset == 0xffff_ffff {
            throw ArchiveError(.unsupported, "zip64 archives are not supported")
        }
        guard directoryOffset + directorySize <= size else {
            throw ArchiveError(.corrupt, "the central directory runs past the end")
        }
        let directory = try bytes(at: directoryOffset, count: directorySize)
        var entries: [Entry] = []
        var offset = 0
        for _ in 0..<count {
            guard offset + 46 <= directory.count, le32(directory, offset) == 0x0201_4b50 else {
                throw ArchiveError(.corrupt, "a central directory entry is damaged")
            }
            let madeBy = le16(directory, offset + 4)
            let nameLength = Int(le16(directory, offset + 28))
            let extraLength = Int(le16(directory, offset + 30))
            let commentLength = Int(le16(directory, offset + 32))
            guard offset + 46 + nameLength <= directory.count else {
                throw ArchiveError(.corrupt, "a central directory entry is damaged")
            }
            let external = le32(directory, offset + 38)
            entries.append(
                Entry(
                    name: String(decoding: directory[(offset + 46)..<(offset + 46 + nameLength)], as: UTF8.self),
                    method: le16(directory, offset + 10), flags: le16(directory, offset + 8),
                    crc: le32(directory, offset + 16), compressedSize: Int(le32(directory, offset + 20)),
                    uncompressedSize: Int(le32(directory, offset + 24)),
                    localHeaderOffset: Int(le32(directory, offset + 42)),
                    unixMode: madeBy >> 8 == 3 ? external >> 16 : nil))
            offset += 46 + nameLength + extraLength + commentLength
        }
        return entries
    }

    private func bytes(at offset: Int, count: Int) throws -> [UInt8] {
        guard offset >= 0, offset + count <= size else { throw ArchiveError(.corrupt, "an offset runs past the end") }
        try handle.seek(toOffset: UInt64(offset))
        var out: [UInt8] = []
        while out.count < count {
            guard let data = try handle.read(upToCount: count - out.count), !data.isEmpty else {
                throw ArchiveError(.corrupt, "the archive is truncated")
            }
            out.append(contentsOf: data)
        }
        return out
    }

    private func le16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    private func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }
}
