//! Records read back from the event log (any version): owned and borrowed decoders.
#![no_main]
use footfall_event::{EventView, LoggedEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let owned = LoggedEvent::decode(data);
    let view = EventView::decode(data);
    // Both decoders take or refuse the same records.
    assert_eq!(owned.is_ok(), view.is_ok());
});
