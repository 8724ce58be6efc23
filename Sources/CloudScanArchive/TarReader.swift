import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A byte source a tar stream is read from.
protocol ByteSource: AnyObject {
    /// Up to `count` bytes; fewer only at the end.
    func read(_ count: Int) throws -> [UInt8]
}

final class PlainSource: ByteSource {
    let handle: FileHandle
    init(handle: FileHandle) { self.handle = handle }
    func read(_ count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        while out.count < count {
            guard let data = try handle.read(upToCount: count - out.count), !data.isEmpty else { break }
            out.append(contentsOf: data)
        }
        return out
    }
}

final class GzipSource: ByteSource {
    let handle: FileHandle
    let inflater: Inflater
    private var pending: [UInt8] = []
    private var offset = 0
    private var inputDone = false

    init(handle: FileHandle) throws {
        self.handle = handle
        inflater = try Inflater(.gzip)
    }

    func read(_ count: Int) throws -> [UInt8] {
        while pending.count - offset < count && !inputDone {
            guard let data = try handle.read(upToCount: 64 * 1024), !data.isEmpty else {
                inputDone = true
                if !inflater.finished { throw ArchiveError(.corrupt, "the gzip stream is truncated") }
                break
            }
            if offset > 0 {
                pending.removeFirst(offset)
                offset = 0
            }
            try inflater.inflate([UInt8](data)) { pending.append(contentsOf: $0) }
        }
        let end = min(offset + count, pending.count)
        let out = Array(pending[offset..<end])
        offset = end
        return out
    }
}

/// ustar / GNU / pax tar entries → the tree writer.
struct TarReader {
    let source: ByteSource
    let writer: TreeWriter

    func read() throws {
        var longName: String?
        var longLink: String?
        var paxPath: String?
        var paxLink: String?
        var paxSize: Int?
        while true {
            let header = try source.read(512)
            guard header.count == 512 else {
                if header.isEmpty { return }  // some writers omit the end blocks
                throw ArchiveError(.corrupt, "the tar stream is truncated")
            }
            if header.allSatisfy({ $0 == 0 }) { return }
            try verifyChecksum(header)
            let type = header[156]
            let isMeta = [UInt8(ascii: "L"), UInt8(ascii: "K"), UInt8(ascii: "x"), UInt8(ascii: "g")].contains(type)
            let size = try (isMeta ? nil : paxSize) ?? number(header[124..<136])
            let name = longName ?? paxPath ?? headerName(header)
            let link = longLink ?? paxLink ?? text(header[157..<257])
            guard size >= 0, size <= writer.limits.maximumTotalBytes else {
                throw ArchiveError(.tooLarge, "entry \(ArchiveExtractor.quoted(name)) declares \(size) bytes")
            }
            switch type {
            case UInt8(ascii: "L"), UInt8(ascii: "K"), UInt8(ascii: "x"), UInt8(ascii: "g"):
                guard size <= 1 << 20 else { throw ArchiveError(.corrupt, "a tar meta entry is over 1 MiB") }
                let data = try readData(size)
                switch type {
                case UInt8(ascii: "L"): longName = text(data[...])
                case UInt8(ascii: "K"): longLink = text(data[...])
                case UInt8(ascii: "x"):
                    let records = try parsePax(data)
                    paxPath = records["path"] ?? paxPath
                    paxLink = records["linkpath"] ?? paxLink
                    if let value = records["size"] {
                        guard !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                            let parsed = Int(value)
                        else { throw ArchiveError(.corrupt, "a bad pax size") }
                        paxSize = parsed
                    }
                default: break  // global pax headers carry nothing we use
                }
                continue
            default:
                break
            }
            longName = nil
            longLink = nil
            paxPath = nil
            paxLink = nil
            paxSize = nil
            let relative = try ArchiveExtractor.safeRelativePath(name)
            switch type {
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
                let mode = (try? number(header[100..<108])) ?? 0o644
                guard let relative else {
                    try skip(size)
                    continue
                }
                let fd = try writer.beginFile(relative, executable: mode & 0o111 != 0)
                defer { close(fd) }
                var remaining = size
                while remaining > 0 {
                    let chunk = try source.read(min(remaining, 256 * 1024))
                    guard !chunk.isEmpty else { throw ArchiveError(.corrupt, "the tar stream is truncated") }
                    try writer.write(fd, chunk)
                    remaining -= chunk.count
                }
                try skipPadding(size)
            case UInt8(ascii: "5"):
                if let relative { try writer.directory(relative) }
                try skip(size)
            case UInt8(ascii: "2"):
                guard let relative else { throw ArchiveError(.pathEscape, "a symbolic link names the root") }
                try writer.symlink(relative, target: link)
                try skip(size)
            case UInt8(ascii: "1"):
                guard let relative else { throw ArchiveError(.pathEscape, "a hard link names the root") }
                try writer.hardLink(relative, target: link)
                try skip(size)
            case UInt8(ascii: "3"), UInt8(ascii: "4"), UInt8(ascii: "6"):
                throw ArchiveError(
                    .specialFile, "entry \(ArchiveExtractor.quoted(name)) is a device or FIFO; archives hold files only"
                )
            default:
                throw ArchiveError(
                    .unsupported,
                    "entry \(ArchiveExtractor.quoted(name)) has tar type \(String(UnicodeScalar(type)))")
            }
        }
    }

    private func readData(_ size: Int) throws -> [UInt8] {
        let data = try source.read(size)
        guard data.count == size else { throw ArchiveError(.corrupt, "the tar stream is truncated") }
        try skipPadding(size)
        return data
    }

    private func skip(_ size: Int) throws {
        var remaining = size
        while remaining > 0 {
            let chunk = try source.read(min(remaining, 256 * 1024))
            guard !chunk.isEmpty else { throw ArchiveError(.corrupt, "the tar stream is truncated") }
            try writer.account(chunk.count)
            remaining -= chunk.count
        }
        try skipPadding(size)
    }

    private func skipPadding(_ size: Int) throws {
        let padding = (512 - size % 512) % 512
        if padding > 0 { _ = try source.read(padding) }
    }

    private func verifyChecksum(_ header: [UInt8]) throws {
        var sum = 0
        for (index, byte) in header.enumerated() { sum += (148..<156).contains(index) ? 32 : Int(byte) }
        guard let recorded = try? number(header[148..<156]), recorded == sum else {
            throw ArchiveError(.corrupt, "a tar header's checksum does not match (not a tar archive?)")
        }
    }

    private func headerName(_ header: [UInt8]) -> String {
        let name = text(header[0..<100])
        let isUstar = text(header[257..<262]) == "ustar"
        let prefix = isUstar ? text(header[345..<500]) : ""
        return prefix.isEmpty ? name : prefix + "/" + name
    }

    private func text(_ bytes: ArraySlice<UInt8>) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }

    /// Octal, space/NUL terminated; or GNU base-256 when the high bit is set.
    private func number(_ bytes: ArraySlice<UInt8>) throws -> Int {
        if let first = bytes.first, first & 0x80 != 0 {
            var value = Int(first & 0x3f)
            for byte in bytes.dropFirst() {
                guard value < Int.max >> 9 else { throw ArchiveError(.corrupt, "a tar number overflows") }
                value = value << 8 | Int(byte)
            }
            return value
        }
        let digits = text(bytes).trimmingCharacters(in: .whitespaces)
        if digits.isEmpty { return 0 }
        guard let value = Int(digits, radix: 8) else {
            throw ArchiveError(.corrupt, "a tar header number is not octal")
        }
        return value
    }

    /// `"<length> <key>=<value>\n"` records, where `<length>` counts the whole record. A record
    /// that does not fit that shape makes the archive corrupt (never an index out of range).
    func parsePax(_ data: [UInt8]) throws -> [String: String] {
        var records: [String: String] = [:]
        var index = 0
        while index < data.count {
            if data[index] == 0 { break }  // padding some writers leave
            let damaged = ArchiveError(.corrupt, "a pax extended header record is damaged")
            guard let space = data[index...].prefix(21).firstIndex(of: 32), space > index,
                data[index..<space].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let length = Int(String(decoding: data[index..<space], as: UTF8.self)),
                length >= space - index + 2, length <= data.count - index,
                data[index + length - 1] == 0x0a
            else { throw damaged }
            let record = String(decoding: data[(space + 1)..<(index + length - 1)], as: UTF8.self)
            if let equals = record.firstIndex(of: "=") {
                records[String(record[..<equals])] = String(record[record.index(after: equals)...])
            }
            index += length
        }
        return records
    }
}
