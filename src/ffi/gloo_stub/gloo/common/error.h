// Stub: see context.h. c10d's header includes it; nothing of it is used.
#pragma once
