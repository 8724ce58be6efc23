import CloudScanCore
import Testing

@Suite("ScanStateMachine")
struct ScanStateMachineTests {
    @Test("the happy path: queued → dispatched → running → completed")
    func happyPath() {
        #expect(ScanStateMachine.transition(from: .queued, event: .dispatched) == .dispatched)
        #expect(ScanStateMachine.transition(from: .dispatched, event: .started) == .running)
        #expect(ScanStateMachine.transition(from: .running, event: .completed) == .completed)
    }

    @Test("a retry goes back through dispatched")
    func retry() {
        #expect(ScanStateMachine.transition(from: .running, event: .retryScheduled) == .retrying)
        #expect(ScanStateMachine.transition(from: .retrying, event: .dispatched) == .dispatched)
    }

    @Test("final states never move, late and duplicate events are ignored")
    func finalStatesAreFinal() {
        for state in ScanStatus.allCases where state.isFinal {
            for event in [ScanStateMachine.Event.dispatched, .started, .completed, .failed, .retryScheduled, .canceled]
            {
                #expect(ScanStateMachine.transition(from: state, event: event) == nil, "\(state) + \(event)")
            }
        }
        // A late "started" after completion, or a duplicate dispatch, is not a transition.
        #expect(ScanStateMachine.transition(from: .running, event: .dispatched) == nil)
        #expect(ScanStateMachine.transition(from: .running, event: .started) == nil)
        #expect(ScanStateMachine.transition(from: .queued, event: .started) == nil)
    }

    @Test("cancel applies to every unfinished state")
    func cancel() {
        #expect(Set(ScanStateMachine.sources(of: .canceled)) == [.queued, .dispatched, .running, .retrying])
    }

    @Test("severities order from info to critical")
    func severityOrder() {
        #expect(Severity.allCases.sorted() == [.info, .low, .medium, .high, .critical])
        #expect(Severity.critical > .high)
    }
}
