# Runs an MPI job in which one rank fails on purpose (the hidden [.mpi_rank_*] cases of
# tests/test_comm_mpi.cpp) and passes when the job ends with a non-zero status and its output holds
# EXPECT, the sign that it failed where it was meant to. A job that hangs instead is what this
# guards against: the test's TIMEOUT ends it, and CTest reports the timeout as a failure.
# Usage: cmake -DEXPECT=<regex> -P expect_job_failure.cmake -- <job command...>
set(job "")
set(past_dashes OFF)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(past_dashes)
    list(APPEND job "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(past_dashes ON)
  endif()
endforeach()
if(NOT job OR NOT DEFINED EXPECT)
  message(FATAL_ERROR "usage: cmake -DEXPECT=<regex> -P ${CMAKE_SCRIPT_MODE_FILE} -- <command...>")
endif()

execute_process(COMMAND ${job} RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
message("${output}")
if(status EQUAL 0)
  message(FATAL_ERROR "the job exited 0, but one of its ranks was meant to fail it")
endif()
if(NOT output MATCHES "${EXPECT}")
  message(FATAL_ERROR "the job failed (${status}), but its output lacks '${EXPECT}'")
endif()
message("the job failed as it should: exit status ${status}")
