// The inference settings' kinds and C++ types. settings.inc lists the settings themselves; it is
// written from unmix.runtime.settings (the one definition) and a test checks that it is current.
#pragma once

#include <cstdint>

namespace unmix {

enum class SettingKind { Integer, Number, Flag, Choice, Seed };

}  // namespace unmix

// The field type of each kind in PipelineConfig (a Choice: true for its first choice).
#define UNMIX_SETTING_TYPE_Integer int
#define UNMIX_SETTING_TYPE_Number double
#define UNMIX_SETTING_TYPE_Flag bool
#define UNMIX_SETTING_TYPE_Choice bool
#define UNMIX_SETTING_TYPE_Seed uint64_t
