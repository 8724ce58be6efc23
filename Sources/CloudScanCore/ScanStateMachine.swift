/// The scan lifecycle's allowed transitions, and why a transition happens.
///
/// Every change is applied as a conditional update (`… WHERE status = from AND version = v`), so
/// late or duplicate messages can never move a scan backwards: ``transition(from:event:)``
/// answers `nil` for them and the caller treats that as "already handled".
public enum ScanStateMachine {
    /// What happened to a scan.
    public enum Event: String, Sendable, Hashable, Codable {
        /// The dispatcher created the scan's Job (or local process).
        case dispatched
        /// The runner reported that it started.
        case started
        /// The runner reported success.
        case completed
        /// The runner, the Job or the sweeper reported failure (including time-outs) and no retry is left.
        case failed
        /// A failure with retries left: the sweeper schedules another attempt.
        case retryScheduled
        /// A user or gateway cancelled the scan.
        case canceled
    }

    /// The state after `event` in state `from`, or nil when the event does not apply (stale,
    /// duplicate, or after a final state).
    public static func transition(from: ScanStatus, event: Event) -> ScanStatus? {
        switch (from, event) {
        case (.queued, .dispatched), (.retrying, .dispatched): return .dispatched
        case (.dispatched, .started): return .running
        case (.dispatched, .completed), (.running, .completed): return .completed
        case (.queued, .failed), (.dispatched, .failed), (.running, .failed), (.retrying, .failed): return .failed
        case (.dispatched, .retryScheduled), (.running, .retryScheduled): return .retrying
        case (let state, .canceled) where !state.isFinal: return .canceled
        default: return nil
        }
    }

    /// The states from which `event` applies (for the `WHERE status = ANY(…)` of a conditional update).
    public static func sources(of event: Event) -> [ScanStatus] {
        ScanStatus.allCases.filter { transition(from: $0, event: event) != nil }
    }
}
