/* phase.h — ATTNPROBE_PHASES=1, a profiling aid (bench/profile-study.sh,
 * docs/testing.md): ap_phase_mark prints "phase WHAT SECONDS" (the time
 * since the previous mark, any module's) on stderr. Off, a mark costs one
 * branch. Device code synchronises before it marks, when on. */
#ifndef AP_PHASE_H
#define AP_PHASE_H

#ifdef __cplusplus
extern "C" {
#endif

int ap_phase_on(void);
void ap_phase_mark(const char *what);

#ifdef __cplusplus
}
#endif

#endif
