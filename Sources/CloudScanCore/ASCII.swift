/// Byte-level checks for text from outside. `Character` properties are Unicode-wide
/// (`"０".isHexDigit` is true for a fullwidth digit), so formats defined in ASCII are checked on
/// UTF-8 bytes, never on characters.
public enum ASCII {
    /// `0-9a-f` only, exactly `count` of them when given.
    public static func isLowercaseHex(_ text: some StringProtocol, count: Int? = nil) -> Bool {
        if let count, text.utf8.count != count { return false }
        return text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// `0-9` only, at least one.
    public static func isDigits(_ text: some StringProtocol) -> Bool {
        !text.utf8.isEmpty && text.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    /// Printable ASCII (0x21–0x7e): no spaces, controls or anything past ASCII.
    public static func isVisible(_ text: some StringProtocol) -> Bool {
        text.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f }
    }
}
