/// Finds a member name given twice in one JSON object. Readers disagree on which of the two
/// counts (Foundation's decoder keeps one, JSONSerialization and Python another), so a message
/// checked through one reader and read through another could be checked as one thing and used
/// as another. Messages with duplicate names are refused instead. Names are compared decoded
/// (`"a"` and `"\u0061"` are the same name). Syntax is not validated here: a malformed document
/// gives nil, and the parser that follows refuses it.
public enum JSONDuplicateNames {
    /// Whether a message body is JSON text as RFC 8259 requires between systems: UTF-8, no byte
    /// order mark, no NUL byte. Foundation's readers also take UTF-16 and UTF-32, which this scanner
    /// (and the findings parser) do not read: such a body is refused before either looks at it.
    public static func isPlainUTF8(_ bytes: [UInt8]) -> Bool {
        guard !bytes.starts(with: [0xEF, 0xBB, 0xBF]), !bytes.contains(0) else { return false }
        return String(validating: bytes, as: UTF8.self) != nil
    }

    /// The first duplicated name (decoded, at most 64 characters), or nil.
    public static func first(in bytes: [UInt8]) -> String? {
        // One set of names per open container (nil for arrays); `expectingName` tracks whether the
        // next string in an object is a member name or a value.
        var stack: [Set<[UInt8]>?] = []
        var expectingName = false
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case 0x7B:  // {
                stack.append([])
                expectingName = true
                index += 1
            case 0x5B:  // [
                stack.append(nil)
                expectingName = false
                index += 1
            case 0x7D, 0x5D:  // } ]
                if !stack.isEmpty { stack.removeLast() }
                expectingName = false
                index += 1
            case 0x2C:  // ,
                expectingName = stack.last.map { $0 != nil } ?? false
                index += 1
            case 0x22:  // "
                guard let (name, end) = string(bytes, from: index) else { return nil }
                if expectingName, let last = stack.indices.last, stack[last] != nil {
                    if stack[last]?.insert(name).inserted == false {
                        return String(decoding: name.prefix(64), as: UTF8.self)
                    }
                    expectingName = false
                }
                index = end
            default:
                index += 1
            }
        }
        return nil
    }

    /// A string token at `start` (the opening quote): its decoded bytes and the index after it.
    static func string(_ bytes: [UInt8], from start: Int) -> ([UInt8], Int)? {
        var out: [UInt8] = []
        var index = start + 1
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x22 { return (out, index + 1) }
            if byte != 0x5C {
                out.append(byte)
                index += 1
                continue
            }
            guard index + 1 < bytes.count else { return nil }
            let escape = bytes[index + 1]
            switch escape {
            case 0x75:  // \uXXXX (a surrogate pair as one scalar), so two spellings of a name compare equal
                guard index + 6 <= bytes.count, let unit = hex(bytes[(index + 2)..<(index + 6)]) else { return nil }
                var scalar = unit
                var length = 6
                if (0xD800...0xDBFF).contains(unit), index + 12 <= bytes.count, bytes[index + 6] == 0x5C,
                    bytes[index + 7] == 0x75, let low = hex(bytes[(index + 8)..<(index + 12)]),
                    (0xDC00...0xDFFF).contains(low)
                {
                    scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    length = 12
                }
                let character = Unicode.Scalar(UInt32(scalar)) ?? "\u{FFFD}"
                out.append(contentsOf: Array(String(character).utf8))
                index += length
            default:
                let simple: [UInt8: UInt8] = [0x62: 0x08, 0x66: 0x0C, 0x6E: 0x0A, 0x72: 0x0D, 0x74: 0x09]
                out.append(simple[escape] ?? escape)
                index += 2
            }
        }
        return nil
    }

    static func hex(_ digits: ArraySlice<UInt8>) -> Int? {
        var value = 0
        for digit in digits {
            let nibble: Int
            switch digit {
            case 0x30...0x39: nibble = Int(digit) - 0x30
            case 0x41...0x46: nibble = Int(digit) - 0x41 + 10
            case 0x61...0x66: nibble = Int(digit) - 0x61 + 10
            default: return nil
            }
            value = value << 4 | nibble
        }
        return value
    }
}
